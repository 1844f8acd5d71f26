"""The chest-CT vision-language model (after RadFinder): losses, metrics, and the 3D encoder."""
