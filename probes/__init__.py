"""Ideal-word decomposition and controlled linear probes for hooked text encoders.

- :mod:`probes.concepts`: factored concept sets (built-in and user YAML/JSON), idiom tests.
- :mod:`probes.ideal_words`: the weighted decomposition (Trager et al., Proposition 4) and its metrics;
  ``python -m probes.ideal_words`` writes a report (:mod:`probes.ideal_words_report`).
- :mod:`probes.embeddings`: final embeddings and per-layer pooled residuals from any hooked encoder.
- :mod:`probes.iw_analysis`, :mod:`probes.iw_uses`: tables per layer; zero-shot, debiasing.
- :mod:`probes.linear`: grouped-CV probes with a control task, probe directions, causal check;
  ``python -m probes.linear --task existence`` writes a report (:mod:`probes.linear_report`).

See docs/probes.md.
"""
