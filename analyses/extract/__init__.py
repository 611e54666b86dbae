"""Paired per-layer image/text embeddings from an open_clip model (:mod:`.pairs`);
``python -m analyses.extract`` runs :mod:`analyses.cli.extract`."""
