"""Image-side analyses of CLIP's hooked image tower (:class:`interp.models.image_encoder.HookedImageEncoder`).

- :mod:`interp.vision.scores`: the caption-minus-foil direction and the score gap d;
- :mod:`interp.vision.decomposition`: direct effects of every (layer, head, position), MLP and
  embedding on the image embedding (Gandelsman et al. 2024);
- :mod:`interp.vision.ablation`: total effects of image heads and MLPs (zero, mean, resample);
- :mod:`interp.vision.tracing`: causal tracing over (layer, patch) cells (Meng et al. 2022);
- :mod:`interp.vision.bridge`: text and image heads of the same decision in one table;
- :mod:`interp.vision.synthetic`: drawn images for tests and demos.
"""
