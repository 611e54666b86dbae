"""Controlled linear probes: grouped cross-validation with a control task, probe directions and
a causal check by steering along them (:mod:`.probe`)."""

from interp._lazy import lazy_exports

_EXPORTS = {name: "probes.linear.probe" for name in (
    "ProbeDirection", "ProbeError", "causal_check", "collect_role_features", "control_labels", "cv_accuracy",
    "fit_direction", "grouped_folds", "probe_layers", "role_weights", "steer")}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
