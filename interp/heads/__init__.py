"""What attention heads do: negator-selective attention (:mod:`.attention`), batched head/MLP
ablation (:mod:`.ablation`) and direct effects through the frozen final LayerNorm (:mod:`.direct_effects`)."""
