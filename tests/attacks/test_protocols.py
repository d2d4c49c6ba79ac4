"""Protocols and the cascade: validity, monotonicity over members, stored settings,
resumable evaluation, sanity flags."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.attacks import PGD20
from nt_robust.attacks.fab import FABConfig
from nt_robust.attacks import protocols as P
from nt_robust.attacks.sanity import cascade_flags, format_flags, forward_flags, gradient_flags, sanity_flags
from nt_robust.attacks.square import SquareConfig
from test_apgd import images

EPS = 0.1
_RNG = np.random.default_rng(0)
_W = jnp.asarray(_RNG.normal(size=(36, 10)), jnp.float32)
_B = jnp.asarray(_RNG.normal(size=(10,)) * 0.1, jnp.float32)


def linear_apply(params, x):
    """Module-level (hashable) ``(params, x) -> logits``."""
    w, b = params
    return x.reshape(x.shape[0], -1) @ w + b


PARAMS = (_W, _B)
# Weak on purpose (few steps, small ε) so that the stages differ and later ones still find points.
SMALL = P.Protocol("small-test", 3, (
    P.Stage("pgd", dataclasses.replace(PGD20, num_steps=2, step_size=0.01, loop="fori")),
    P.Stage("fab", FABConfig(eps=0.0, targeted=False, num_steps=3)),
    P.Stage("square", SquareConfig(eps=0.0, num_queries=30), white_box=False),
))


def _data(n=32):
    x = np.asarray(images(n, shape=(6, 6, 1), seed=5))
    y = np.array(jnp.argmax(linear_apply(PARAMS, jnp.asarray(x)), 1))
    y[:3] = (y[:3] + 1) % 10  # three points wrong from the start
    return x, y


def test_registered_protocols_have_versions_and_take_eps():
    assert {"autoattack-standard", "autoattack-2020", "pgd20-0.007", "pgd20-0.003", "cw20",
            "cw20-authors"} <= set(P.PROTOCOLS)
    standard = P.get_protocol("autoattack-standard", 8 / 255)
    assert [s.name for s in standard.stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(s.config.eps == 8 / 255 for s in standard.stages)
    assert standard.stages[3].config.num_queries == 5000 and not standard.stages[3].white_box
    assert [s.name for s in P.PROTOCOLS["autoattack-2020"].stages] == ["apgd-ce", "apgd-dlr", "fab", "square"]
    assert P.get_protocol("pgd20-0.003", 0.031).stages[0].config.step_size == 0.003
    with pytest.raises(ValueError, match="unknown protocol"):
        P.get_protocol("nope", 0.1)
    json.dumps(standard.to_dict())


def test_cascade_is_at_least_as_strong_as_each_member_and_records_settings():
    x, y = _data()
    protocol = SMALL.at_eps(EPS)
    result = P.run_protocol(protocol, linear_apply, PARAMS, x, y, seed=1, batch_size=16)
    summary = result.summary()
    assert summary["protocol"] == "small-test" and summary["protocol_version"] == 3
    assert summary["eps"] == EPS and summary["num_examples"] == 32 and summary["seed"] == 1
    # each stage that ran has its wall time, and together they fit inside the whole call
    ran = [s.name for i, s in enumerate(protocol.stages)
           if np.any((result.per_example["broken_by"] == P.ROBUST) | (result.per_example["broken_by"] >= i))]
    assert set(summary["stage_seconds"]) == set(ran) and all(v >= 0 for v in summary["stage_seconds"].values())
    assert sum(summary["stage_seconds"].values()) <= summary["seconds"] + 1e-3
    after = summary["robust_accuracy_after_stage"]
    values = [after[f"{i}:{s.name}"] for i, s in enumerate(protocol.stages)]
    assert values == sorted(values, reverse=True) and values[-1] == summary["robust_accuracy"]
    broken_by = result.per_example["broken_by"]
    assert np.all(broken_by[:3] == P.CLEAN_ERROR)
    robust = broken_by == P.ROBUST
    np.testing.assert_array_equal(result.per_example["adv_pred"] == y, robust)
    for index, stage in enumerate(protocol.stages):
        alone = P.run_protocol(dataclasses.replace(protocol, stages=(stage,)), linear_apply, PARAMS, x, y,
                               seed=1, batch_size=16)
        assert summary["robust_accuracy"] <= alone.summary()["robust_accuracy"]
    json.dumps(summary)


def test_bucket_sizes_pad_at_most_a_quarter_and_compile_few_shapes():
    assert [P.bucket_size(n, 256) for n in (1, 8, 9, 23, 33, 64, 65, 100, 129, 250)] == \
        [8, 8, 10, 24, 40, 64, 80, 112, 160, 256]  # by hand: 3 significant bits, at least 8
    sizes = [P.bucket_size(n, 4096) for n in range(1, 4097)]
    assert all(n <= size <= max(8, 1.25 * n) for n, size in enumerate(sizes, 1))
    assert sizes == sorted(sizes)
    for octave in range(3, 12):  # n in (2^k, 2^(k+1)]: at most four shapes to compile
        assert len(set(sizes[2 ** octave:2 ** (octave + 1)])) <= 4
    assert P.bucket_size(300, 256) == 300 and P.bucket_size(250, 200) == 250  # never fewer rows than points
    assert P.bucket_size(23, 16) == 23
    with pytest.raises(ValueError, match="at least one point"):
        P.bucket_size(0, 16)


def test_each_stage_runs_on_the_still_robust_points_padded_to_their_bucket(monkeypatch):
    x, y = _data(40)
    shapes, original = [], P._stage_predictions
    monkeypatch.setattr(P, "_stage_predictions",
                        lambda apply_fn, config, variables, xs, ys, key: shapes.append(len(xs)) or
                        original(apply_fn, config, variables, xs, ys, key))
    result = P.run_protocol(SMALL.at_eps(EPS), linear_apply, PARAMS, x, y, seed=1, batch_size=40)
    broken_by = result.per_example["broken_by"]
    todo = [int(np.sum((broken_by == P.ROBUST) | (broken_by >= i))) for i in range(len(SMALL.stages))]
    assert todo[0] == 37  # the three points wrong from the start are never attacked
    assert shapes == [P.bucket_size(n, 40) for n in todo if n > 0]


def test_interrupted_evaluation_resumes_without_recomputing(tmp_path, monkeypatch):
    x, y = _data()
    protocol = SMALL.at_eps(EPS)
    fingerprint = {"protocol": protocol.to_dict(), "seed": 1}
    reference = P.run_protocol(protocol, linear_apply, PARAMS, x, y, seed=1, batch_size=16)

    class Interrupted(Exception):
        pass

    def stop_after_first(done, total):
        if done == 1:
            raise Interrupted

    store = P.BatchStore(tmp_path / "ev.partial", fingerprint)
    with pytest.raises(Interrupted):
        P.run_protocol(protocol, linear_apply, PARAMS, x, y, seed=1, batch_size=16, store=store,
                       progress=stop_after_first)
    assert json.loads((tmp_path / "ev.partial" / "index.json").read_text())["batches"] == [0]

    calls = []
    original = P.cascade_batch
    monkeypatch.setattr(P, "cascade_batch", lambda *a, **k: calls.append(1) or original(*a, **k))
    resumed = P.run_protocol(protocol, linear_apply, PARAMS, x, y, seed=1, batch_size=16,
                             store=P.BatchStore(tmp_path / "ev.partial", fingerprint))
    assert len(calls) == 1  # batch 1 of 2; batch 0 came from disk
    for key, value in reference.per_example.items():
        np.testing.assert_array_equal(resumed.per_example[key], value)
    # Different settings: the stale batches are discarded, not mixed in.
    assert P.BatchStore(tmp_path / "ev.partial", {**fingerprint, "seed": 2}).done == set()


def test_sanity_flags_catch_broken_models():
    x, y = _data(16)
    key = jax.random.key(0)
    clean = {f.name: f for f in sanity_flags(linear_apply, PARAMS, x, y, key, EPS)}
    assert not any(f.raised for f in clean.values()), format_flags(list(clean.values()))
    assert "0.5" in clean["eps_not_monotone"].detail or "PGD" in clean["eps_not_monotone"].detail

    def noisy(params, z):  # randomness in the forward pass (host noise: a new draw every call)
        shape = jax.ShapeDtypeStruct((z.shape[0], 10), jnp.float32)
        noise = jax.pure_callback(lambda: np.random.normal(size=shape.shape).astype(np.float32), shape)
        return linear_apply(params, z) + noise

    def batch_norm_like(params, z):  # output depends on the batch statistics
        logits = linear_apply(params, z)
        return (logits - logits.mean(0)) / (logits.std(0) + 1e-3)

    def quantized(params, z):  # rounding the input: zero gradients everywhere
        return linear_apply(params, jnp.round(z * 4) / 4)

    def probabilities(params, z):
        return jax.nn.softmax(linear_apply(params, z))

    def raised(flags):
        return {f.name for f in flags if f.raised}

    assert raised(forward_flags(batch_norm_like, PARAMS, x, bn_mode="train")) == {"batch_dependent_output",
                                                                                  "bn_train_mode"}
    assert raised(gradient_flags(quantized, PARAMS, x, y)) == {"zero_gradients"}
    assert raised(forward_flags(probabilities, PARAMS, x)) == {"probability_outputs"}
    assert "randomized_forward" in raised(forward_flags(noisy, PARAMS, x))
    result = P.ProtocolResult(SMALL.at_eps(EPS), {"broken_by": np.array([2, 2, -1, 0] * 5)}, 0)
    assert cascade_flags(result)[0].raised


def test_autoattack_2020_is_the_authors_bundled_version_with_five_restarts():
    # fraauto/autoattack.py (the authors' copy, plus=False): APGD and FAB with n_restarts=5 and
    # n_iter=100, Square with 5000 queries, p_init 0.8, 1 restart, schedule not rescaled.
    protocol = P.get_protocol("autoattack-2020", 0.031)
    assert protocol.version == 2
    ce, dlr, fab, square = (s.config for s in protocol.stages)
    assert (ce.loss, ce.num_steps, ce.restarts, ce.rho) == ("ce", 100, 5, 0.75)
    assert (dlr.loss, dlr.num_steps, dlr.restarts) == ("dlr", 100, 5)
    assert (fab.targeted, fab.num_steps, fab.restarts) == (False, 100, 5)
    assert (square.num_queries, square.p_init, square.restarts, square.rescale_schedule) == (5000, 0.8, 1, False)
    assert all(c.eps == 0.031 for c in (ce, dlr, fab, square))
    # The standard version is unchanged: 1 restart.
    standard = P.PROTOCOLS["autoattack-standard"]
    assert standard.version == 1 and [s.config.restarts for s in standard.stages] == [1, 1, 1, 1]


def test_cw20_authors_differs_from_cw20_only_in_its_loss():
    from nt_robust.attacks import CW20
    cw, authors = P.PROTOCOLS["cw20"].stages[0].config, P.PROTOCOLS["cw20-authors"].stages[0].config
    assert cw == CW20 and cw.loss == "cw" and authors.loss == "cw_authors"
    assert dataclasses.replace(authors, loss="cw") == cw
    assert P.PROTOCOLS["cw20-authors"].version == 1


def test_results_of_an_older_protocol_version_are_discarded_not_mixed_in(tmp_path):
    # What version 1 of autoattack-2020 was: 1 restart per stage. Its stored batches carry its
    # settings in the fingerprint (name, version, every stage), so version 2 starts afresh.
    current = P.get_protocol("autoattack-2020", EPS)
    old = dataclasses.replace(current, version=1, stages=tuple(
        dataclasses.replace(s, config=dataclasses.replace(s.config, restarts=1)) for s in current.stages))
    fingerprint = lambda protocol: {"protocol": protocol.to_dict(), "seed": 0}  # noqa: E731
    store = P.BatchStore(tmp_path / "ev.partial", fingerprint(old))
    store.save(0, {"broken_by": np.zeros(4, np.int16)})
    assert P.BatchStore(tmp_path / "ev.partial", fingerprint(old)).done == {0}
    assert P.BatchStore(tmp_path / "ev.partial", fingerprint(current)).done == set()
    # The version alone (same stages) is enough to tell them apart.
    assert P.BatchStore(tmp_path / "other.partial", fingerprint(current)).fingerprint != \
        P.BatchStore(tmp_path / "third.partial", fingerprint(dataclasses.replace(current, version=1))).fingerprint


def test_linf_protocol_settings_are_described_as_before_norms_existed():
    """A stored ℓ∞ result's fingerprint (protocol.to_dict()) is unchanged by the norm
    field, so finished evaluations are reused; an ℓ2 one names its norm."""
    before = {"name", "version", "eps", "description", "stages"}
    assert set(P.get_protocol("autoattack-standard", 0.031).to_dict()) == before
    assert set(P.get_protocol("pgd20-0.007", 0.031).to_dict()["stages"][0]) == {"name", "attack", "white_box",
                                                                              "config"}
    l2 = P.get_protocol("apgd", 0.5, "l2").to_dict()
    assert l2["norm"] == "l2" and {s["config"]["norm"] for s in l2["stages"]} == {"l2"}
