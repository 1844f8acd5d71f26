"""The chest-CT vision-language model (RadFinder, domain.md C10): losses, metrics, and the 3D encoder."""
