"""The site's side of a deployment: ``fedchest-supernode`` (Flower's SuperNode with prompt polling)."""
