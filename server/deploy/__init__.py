"""Deployment: certificates and keys, and a local multi-process consortium (SuperLink + SuperNodes over TLS
with node authentication). Container images, compose file, proxy configuration and the hospital guide are in
the repository's ``deploy/`` folder."""
