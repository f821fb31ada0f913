"""The strategy options ``job create`` and ``fedsilo simulate`` share (docs/strategies.md)."""

from __future__ import annotations

import argparse

from fedsilo.strategies import BUILTIN_STRATEGIES, StrategyParameters

__all__ = ["add_strategy_arguments", "strategy_parameters"]


def add_strategy_arguments(parser: argparse.ArgumentParser) -> None:
    """The strategy options; unset ones take the strategy's defaults."""
    group = parser.add_argument_group("federated optimization strategy (docs/strategies.md)")
    group.add_argument(
        "--strategy",
        default="fedavg",
        help=f"{', '.join(BUILTIN_STRATEGIES)} or an installed fedsilo.strategies entry point",
    )
    group.add_argument("--server-learning-rate", type=float, help="server step size eta")
    group.add_argument("--server-momentum", type=float, help="fedavgm's momentum beta")
    group.add_argument("--beta1", type=float, help="first-moment decay (fedadam/yogi/adagrad)")
    group.add_argument("--beta2", type=float, help="second-moment decay (fedadam, fedyogi)")
    group.add_argument("--tau", type=float, help="adaptivity tau (fedadam/yogi/adagrad)")
    group.add_argument("--proximal-mu", type=float, help="fedprox's proximal term weight mu")


def strategy_parameters(args: argparse.Namespace) -> StrategyParameters:
    """The parameters the options of :func:`add_strategy_arguments` gave."""
    return StrategyParameters(
        server_learning_rate=args.server_learning_rate,
        server_momentum=args.server_momentum,
        beta1=args.beta1,
        beta2=args.beta2,
        tau=args.tau,
        proximal_mu=args.proximal_mu,
    )
