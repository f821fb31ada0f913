"""Server strategies against hand-computed references, parameters, state encoding, entry points."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedsilo.strategies import (
    BUILTIN_STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    ServerStrategy,
    StrategyChoice,
    StrategyError,
    StrategyParameters,
    apply_server_step,
    decode_optimizer_state,
    encode_optimizer_state,
    installed_strategies,
    load_strategy,
    resolve_parameters,
    strategy_names,
)

# A global model of 3 values and the mean models of 4 rounds around it.
X0 = [0.5, -1.0, 2.0]
MEANS = [[0.7, -1.2, 2.0], [0.6, -0.9, 2.5], [0.9, -1.1, 1.0], [0.4, -1.0, 2.2]]


def run(strategy: ServerStrategy, steps: list[list[float]] = MEANS) -> list[list[float]]:
    """The models after each step, starting from X0 (float64 vectors, as the coordinator)."""
    x = np.array(X0, dtype=np.float64)
    state = strategy.initial_state(x.size)
    models = []
    for mean in steps:
        x, state = strategy.server_step(x, np.array(mean, dtype=np.float64), state)
        models.append(list(x))
    return models


def reference_adaptive(
    kind: str, eta: float, beta1: float, beta2: float, tau: float
) -> list[list[float]]:
    """Reddi et al. 2021, Algorithm 2, one coordinate at a time in Python floats."""
    x = list(X0)
    m = [0.0] * 3
    v = [tau * tau] * 3  # v_{-1} >= tau^2
    models = []
    for mean in MEANS:
        for i in range(3):
            delta = mean[i] - x[i]
            m[i] = beta1 * m[i] + (1 - beta1) * delta
            if kind == "adagrad":
                v[i] = v[i] + delta**2
            elif kind == "adam":
                v[i] = beta2 * v[i] + (1 - beta2) * delta**2
            else:  # yogi
                sign = (v[i] > delta**2) - (v[i] < delta**2)  # sign(0) = 0
                v[i] = v[i] - (1 - beta2) * delta**2 * sign
            x[i] = x[i] + eta * m[i] / (math.sqrt(v[i]) + tau)
        models.append(list(x))
    return models


def test_fedadam_first_step_by_hand() -> None:
    # eta 0.1, beta1 0.9, beta2 0.99, tau 0.01 on one coordinate: delta = 0.2,
    # m = 0.1 * 0.2 = 0.02, v = 0.99 * 1e-4 + 0.01 * 0.04 = 4.99e-4,
    # x = 0.5 + 0.1 * 0.02 / (sqrt(4.99e-4) + 0.01) = 0.5 + 0.002 / 0.0323383...
    strategy = FedAdam(StrategyParameters(server_learning_rate=0.1, tau=0.01))
    x, state = strategy.server_step(np.array([0.5]), np.array([0.7]), strategy.initial_state(1))
    assert state["m"][0] == pytest.approx(0.02, rel=1e-12)
    assert state["v"][0] == pytest.approx(4.99e-4, rel=1e-12)
    assert x[0] == pytest.approx(0.5 + 0.002 / (math.sqrt(4.99e-4) + 0.01), rel=1e-12)
    assert x[0] == pytest.approx(0.56184615, abs=1e-8)


@pytest.mark.parametrize(
    ("cls", "kind", "parameters"),
    [
        (FedAdam, "adam", StrategyParameters(0.05, None, 0.9, 0.99, 1e-3)),
        (FedAdam, "adam", StrategyParameters(1.0, None, 0.5, 0.5, 0.1)),
        (FedYogi, "yogi", StrategyParameters(0.05, None, 0.9, 0.99, 1e-3)),
        # tau^2 = 0.25 = delta^2 in the second step's last coordinate: sign(0) = 0.
        (FedYogi, "yogi", StrategyParameters(1.0, None, 0.0, 0.3, 0.5)),
        (FedAdagrad, "adagrad", StrategyParameters(0.05, None, 0.0, None, 1e-3)),
        (FedAdagrad, "adagrad", StrategyParameters(0.5, None, 0.9, None, 0.1)),
    ],
)
def test_adaptive_optimizers_follow_the_paper_over_several_steps(
    cls: type[FedAdam], kind: str, parameters: StrategyParameters
) -> None:
    p = parameters
    assert p.server_learning_rate is not None and p.beta1 is not None and p.tau is not None
    expected = reference_adaptive(kind, p.server_learning_rate, p.beta1, p.beta2 or 0.0, p.tau)
    got = run(cls(parameters))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    # And they move: not FedAvg, not the start.
    assert not np.allclose(got[-1], MEANS[-1]) and not np.allclose(got[-1], X0)


def test_yogi_differs_from_adam_where_the_paper_says() -> None:
    # Yogi's v moves by (1 - beta2) * delta^2 towards delta^2, Adam's by (1 - beta2) * (d^2 - v).
    parameters = StrategyParameters(0.1, None, 0.9, 0.5, 1e-3)
    adam = FedAdam(parameters)
    yogi = FedYogi(parameters)
    x, mean = np.array([0.0]), np.array([1.0])
    _, adam_state = adam.server_step(x, mean, adam.initial_state(1))
    _, yogi_state = yogi.server_step(x, mean, yogi.initial_state(1))
    assert adam_state["v"][0] == pytest.approx(0.5 * 1e-6 + 0.5)
    assert yogi_state["v"][0] == pytest.approx(1e-6 + 0.5)


def test_fedavgm_by_hand() -> None:
    strategy = FedAvgM(StrategyParameters(server_learning_rate=0.5, server_momentum=0.9))
    got = run(strategy, MEANS[:3])
    x, m = list(X0), [0.0] * 3
    expected = []
    for mean in MEANS[:3]:
        for i in range(3):
            m[i] = 0.9 * m[i] + (mean[i] - x[i])
            x[i] = x[i] + 0.5 * m[i]
        expected.append(list(x))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # First coordinate, two steps: m1 = 0.2, x1 = 0.6; m2 = 0.18 + 0.0 = 0.18, x2 = 0.69.
    assert got[0][0] == pytest.approx(0.6) and got[1][0] == pytest.approx(0.69)
    # With eta 1 and no momentum it is FedAvg (up to float rounding).
    plain = FedAvgM(StrategyParameters(server_learning_rate=1.0, server_momentum=0.0))
    np.testing.assert_allclose(run(plain), MEANS, rtol=1e-15, atol=1e-15)


def test_fedavg_and_fedprox_take_the_mean_and_keep_no_state() -> None:
    for strategy in (FedAvg(StrategyParameters()), FedProx(StrategyParameters())):
        assert strategy.updates_server_model is False
        assert strategy.initial_state(3) == {}
        assert run(strategy) == MEANS
    assert FedProx(StrategyParameters()).parameters.proximal_mu == 0.01
    assert FedProx(StrategyParameters(proximal_mu=0.5)).parameters.proximal_mu == 0.5


def test_apply_server_step_keeps_layout_and_dtypes_and_does_not_modify_inputs() -> None:
    strategy = load_strategy("fedadam")
    current = [np.array([[0.5, -1.0]], dtype=np.float32), np.array(2.0, dtype=np.float32)]
    mean = [np.array([[0.7, -1.2]], dtype=np.float32), np.array(2.0, dtype=np.float32)]
    copies = [a.copy() for a in current + mean]
    following, state = apply_server_step(strategy, current, mean, None)
    assert [(a.dtype, a.shape) for a in following] == [(np.float32, (1, 2)), (np.float32, ())]
    assert sorted(state) == ["m", "v"] and all(v.dtype == np.float64 for v in state.values())
    assert all(np.array_equal(a, b) for a, b in zip(current + mean, copies, strict=True))
    # The same inputs give the same bits, and a second step continues from the state.
    again, _ = apply_server_step(strategy, current, mean, None)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(following, again, strict=True))
    second, _ = apply_server_step(strategy, following, mean, state)
    assert not np.array_equal(second[0], following[0])


def test_apply_server_step_refuses_bad_state_and_non_finite_results() -> None:
    strategy = load_strategy("fedavgm")
    current, mean = [np.zeros(3, dtype=np.float32)], [np.ones(3, dtype=np.float32)]
    with pytest.raises(StrategyError, match="does not fit the model"):
        apply_server_step(strategy, current, mean, {"momentum": np.zeros(4)})
    with pytest.raises(StrategyError, match="layout"):
        apply_server_step(strategy, current, [np.ones(2, dtype=np.float32)], None)
    with pytest.raises(StrategyError, match="finite"):
        apply_server_step(strategy, current, mean, {"momentum": np.full(3, np.inf)})


def test_parameters_are_resolved_to_defaults_and_checked() -> None:
    assert resolve_parameters("fedadam", StrategyParameters()) == StrategyParameters(
        server_learning_rate=0.01, beta1=0.9, beta2=0.99, tau=1e-3
    )
    assert resolve_parameters("fedavg", StrategyParameters()) == StrategyParameters()
    given = StrategyParameters(server_learning_rate=0.5, tau=0.1)
    assert resolve_parameters("fedyogi", given) == StrategyParameters(0.5, None, 0.9, 0.99, 0.1)
    bad = [
        ("fedadam", StrategyParameters(proximal_mu=0.1), "fedadam does not use .* proximal_mu"),
        ("fedavg", StrategyParameters(server_learning_rate=0.1), "does not use"),
        ("fedadam", StrategyParameters(server_learning_rate=0.0), "server_learning_rate"),
        ("fedadam", StrategyParameters(beta2=1.0), "beta2 must be below 1"),
        ("fedadam", StrategyParameters(tau=float("nan")), "tau"),
        ("fedavgm", StrategyParameters(server_momentum=-0.1), "server_momentum"),
        ("fedprox", StrategyParameters(proximal_mu=-1.0), "proximal_mu"),
    ]
    for name, parameters, message in bad:
        with pytest.raises(StrategyError, match=message):
            load_strategy(name, parameters)
    with pytest.raises(StrategyError, match="unknown"):
        load_strategy("fedsgd")


def test_parameters_round_trip_through_json() -> None:
    parameters = StrategyParameters(0.5, None, 0.9, 0.99, 1e-3, None)
    assert StrategyParameters.from_json(parameters.to_json()) == parameters
    assert StrategyParameters.from_json(None) == StrategyParameters()
    with pytest.raises(StrategyError, match="must be a number"):
        StrategyParameters.from_json({"tau": "big"})
    choice = StrategyChoice("fedadam", parameters)
    assert StrategyChoice.from_json(choice.to_json()) == choice


def test_optimizer_state_encoding_is_exact_deterministic_and_checked() -> None:
    state = {"v": np.array([1e-300, 3.5, -0.0]), "m": np.array([np.pi, 2.0, 1 / 3])}
    data = encode_optimizer_state(state)
    assert data == encode_optimizer_state(dict(reversed(list(state.items()))))
    decoded = decode_optimizer_state(data)
    assert sorted(decoded) == ["m", "v"]
    for key in state:
        assert decoded[key].tobytes() == state[key].tobytes()
    assert decode_optimizer_state(encode_optimizer_state({})) == {}
    for damaged in (b"", data[:-1], b"pickle" + data, data + b"\x00"):
        with pytest.raises(StrategyError, match="unreadable"):
            decode_optimizer_state(damaged)


def test_builtins_are_known() -> None:
    assert set(BUILTIN_STRATEGIES) == {
        "fedavg",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "fedprox",
    }
    assert set(BUILTIN_STRATEGIES) <= set(strategy_names())


def install_distribution(directory: Path, module_source: str, entry_points: str) -> None:
    """A real (if tiny) installed distribution on ``directory``: a module and its dist-info."""
    (directory / "halfway_strategy.py").write_text(textwrap.dedent(module_source))
    info = directory / "halfway_strategy-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: halfway-strategy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


HALFWAY = """
    import numpy as np

    class Halfway:
        name = "halfway"
        updates_server_model = True

        def __init__(self, parameters):
            if parameters.tau is not None:
                raise ValueError("halfway takes no tau")
            self.rate = parameters.server_learning_rate or 0.5

        def initial_state(self, size):
            return {"steps": np.zeros(size)}

        def server_step(self, current, mean, state):
            return current + self.rate * (mean - current), {"steps": state["steps"] + 1.0}

    def not_a_strategy(parameters):
        return "not a strategy"
"""


def test_strategies_install_as_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_distribution(
        tmp_path,
        HALFWAY,
        """
        [fedsilo.strategies]
        halfway = halfway_strategy:Halfway
        broken = halfway_strategy:not_a_strategy
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert installed_strategies()["halfway"] == "halfway_strategy:Halfway"
    assert "halfway" in strategy_names()

    strategy = load_strategy("halfway", StrategyParameters(server_learning_rate=0.25))
    following, state = apply_server_step(
        strategy, [np.zeros(2, dtype=np.float32)], [np.ones(2, dtype=np.float32)], None
    )
    assert following[0].tolist() == [0.25, 0.25] and state["steps"].tolist() == [1.0, 1.0]
    # Parameters the built-ins' rules do not know are the factory's to check.
    with pytest.raises(StrategyError, match="refused its parameters: halfway takes no tau"):
        load_strategy("halfway", StrategyParameters(tau=0.1))
    with pytest.raises(StrategyError, match="does not provide the fedsilo strategy interface"):
        load_strategy("broken")
