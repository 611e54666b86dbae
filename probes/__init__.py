"""Ideal-word decomposition and controlled linear probes for hooked text encoders.

- :mod:`probes.concepts`: factored concept sets (built-in and user YAML/JSON), idiom tests.
- :mod:`probes.embeddings`: final embeddings and per-layer pooled residuals from any hooked encoder.
- :mod:`probes.ideal_words`: the weighted decomposition (Trager et al., Proposition 4), its metrics
  per layer, zero-shot and debiasing; ``python -m probes.ideal_words`` runs :mod:`probes.cli.ideal_words`.
- :mod:`probes.linear`: grouped-CV probes with a control task, probe directions, causal check;
  ``python -m probes.linear --task existence`` runs :mod:`probes.cli.linear`.

See docs/probes.md.
"""
