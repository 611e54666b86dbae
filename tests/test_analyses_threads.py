"""The analyses' fits on small matrices run on one BLAS thread (interp.runs.threads.single_blas_thread),
although the caller's BLAS pool has two; the report's tables are the same either way."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import analyses.alignment.procrustes as procrustes
import analyses.assignment_map as assignment_map
import analyses.matching as matching
import analyses.similarity as similarity
from analyses.assignment_map import AssignmentMapConfig
from analyses.cli.report import ReportOptions, compute_tables
from analyses.synthetic import synthetic_pair

# (module, function the fits call through the module's namespace): every place where BLAS works
FIT_SITES = [
    (similarity, "_hsic_cross_centered"),  # RBF / debiased CKA permutation null
    (similarity, "as_paired"),  # the start of the linear permutation test (its products are inline)
    (matching, "quadratic_assignment"),  # seeded QAP (scipy FAQ)
    (matching, "linear_sum_assignment"),  # local CKA + Hungarian
    (procrustes, "fit_procrustes"),  # k-fold Procrustes alignment
    (assignment_map, "fit_least_squares"),
    (assignment_map, "fit_procrustes"),
    (assignment_map, "assignments"),  # Sinkhorn inside the assignment-map training
]


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_every_analysis_fit_runs_on_one_blas_thread(monkeypatch):
    seen: dict[str, list[list[int]]] = {}
    for module, name in FIT_SITES:
        original = getattr(module, name)
        key = f"{module.__name__}.{name}"
        seen[key] = []

        def recording(*args, _original=original, _key=key, **kwargs):
            seen[_key].append(_blas_threads())
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, recording)
    x, y = synthetic_pair(120, seed=1)
    opts = ReportOptions(permutations=5, n_base=30, n_query=40, match_seeds=(0,), qap_restarts=2, folds=3, csls_k=5,
                         map_config=AssignmentMapConfig(epochs=1, min_steps=0))
    with threadpool_limits(limits=2, user_api="blas"):
        outside = _blas_threads()
        compute_tables(x, y, opts)
    assert outside and max(outside) == 2, "the test needs a BLAS pool of 2 threads outside the fits"
    assert all(seen.values()), {k: len(v) for k, v in seen.items()}  # every site was reached
    assert all(threads and max(threads) == 1 for calls in seen.values() for threads in calls), seen


@pytest.mark.parametrize("call", ["permutation_test", "matching_protocol", "kfold_alignment", "compare_maps"])
def test_the_limit_is_lifted_after_each_fit(call):
    """Leaving a limited fit restores the caller's pool (2 threads here)."""
    x, y = synthetic_pair(60, seed=2)
    calls = {
        "permutation_test": lambda: similarity.permutation_test(x.embeddings, y.embeddings, n_permutations=3),
        "matching_protocol": lambda: matching.matching_protocol(x.embeddings, y.embeddings, n_base=10, n_query=12,
                                                                seeds=(0,), qap_restarts=1),
        "kfold_alignment": lambda: procrustes.kfold_alignment(x.embeddings, y.embeddings, np.c_[np.arange(60), np.arange(60)],
                                                              n_folds=3, csls_k=5),
        "compare_maps": lambda: assignment_map.compare_maps(x.embeddings, y.embeddings,
                                                            config=AssignmentMapConfig(epochs=1, min_steps=0)),
    }
    with threadpool_limits(limits=2, user_api="blas"):
        calls[call]()
        assert max(_blas_threads()) == 2
