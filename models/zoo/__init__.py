"""The shipped models, one folder each (model.pt, codec.pt, top.pt [bottom.pt], MODEL_CARD.md): installed as the
package ``sparse_vqvae.zoo`` (pyproject.toml maps it onto this folder), which ``sparse_vqvae.cli`` finds with
importlib.resources. ``python -m tasks.export_zoo NAME`` writes a folder here."""
