"""Everything the coordinator and the sites must agree on: label ontology, models, losses, metrics.

This package never imports flwr, sqlalchemy, pydicom or streamlit.
"""
