"""Deployment parts of the coordinator: certificates and keys, the patched SuperLink (``fedchest-superlink``) and
the per-round overhead read from the registry. The local multi-process consortium is consortium/deploy_local.py;
container images, compose file, proxy configuration and the hospital guide are in the repository's ``deploy/``
folder."""
