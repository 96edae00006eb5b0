"""`rlhf train ppo` and `rlhf learner status|watch|stop --target HOST:PORT`."""

from __future__ import annotations

import argparse
import json


def register(commands) -> None:
    from rlhf.core.client import ClientOptions
    from rlhf.core.flags import add_config_arguments
    from rlhf.learner.config import GRPO_DEFAULTS, PPOConfig

    ppo = commands.train.add_parser(
        "ppo",
        help="RL stage: PPO against the policy, reward and reference services",
        description="PPO with a per-token KL penalty against the reference policy. Rollouts come from the "
        "policy replicas, scores from the reward service, log pi_SFT from the reference service; the learner "
        "updates pi_RL and the value model, then pushes the new weights to every replica. While it runs, "
        "the learner serves rlhf.v1.Learner on --port.",
    )
    add_config_arguments(ppo, PPOConfig)
    add_learner_arguments(ppo)
    ppo.set_defaults(func=run_ppo)

    grpo = commands.train.add_parser(
        "grpo",
        help="RL stage: GRPO, i.e. `train ppo` with GRPO's recipe as its defaults",
        description="GRPO (group-relative advantages, no value model): `rlhf train ppo` with GRPO's own recipe "
        "as defaults: --advantage-estimator grpo --samples-per-prompt 4, one pass of one minibatch per batch "
        "(--ppo-epochs 1 --num-minibatches 1), the KL in the loss (--kl-in loss --kl-estimator k3, "
        "ratio-corrected) with --kl-coef 0.1. Every flag of `rlhf train ppo` applies.",
    )
    add_config_arguments(grpo, PPOConfig)
    add_learner_arguments(grpo)
    grpo.set_defaults(func=run_ppo, **GRPO_DEFAULTS)

    learner = commands.top.add_parser("learner", help="talk to a running learner: status, watch, stop")
    actions = learner.add_subparsers(dest="learner_command", metavar="ACTION", required=True)
    for name, handler, text in (
        ("status", show_status, "step, phase, weights version and the latest metrics"),
        ("watch", watch_metrics, "print each step's metrics as it finishes, until the run ends"),
        ("stop", stop_learner, "checkpoint at the end of the current step, then end the run"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--target", required=True, help="learner HOST:PORT")
        action.add_argument("--json", action="store_true", help="print JSON instead of text")
        ClientOptions.add_arguments(action)
        action.set_defaults(func=handler)


def add_learner_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of `rlhf train ppo` and `rlhf train grpo` but the run's (PPOConfig)."""
    from rlhf.core.flags import add_config_arguments
    from rlhf.core.launch import add_launch_arguments
    from rlhf.core.server import ServerOptions
    from rlhf.learner.config import DEFAULT_PORT, LearnerProcess

    ServerOptions.add_arguments(parser, default_port=DEFAULT_PORT)
    parser._option_string_actions["--auth-token-file"].help = (
        "bearer token file: required on every RPC to this learner's control API, and sent on the learner's own "
        "calls to the policy, reward and reference services (env RLHF_AUTH_TOKEN_FILE)"
    )
    add_config_arguments(parser, LearnerProcess)
    add_launch_arguments(parser)


def connect_services(config, args: argparse.Namespace):
    """gRPC clients for every service, with the per-call deadline at --rpc-timeout (retried within
    --service-timeout)."""
    import dataclasses

    from rlhf.core.client import ClientOptions, resolve_replicas, split_target
    from rlhf.core.flags import config_from_args
    from rlhf.learner.config import LearnerProcess
    from rlhf.learner.replicas import Services
    from rlhf.policy.client import PolicyClient
    from rlhf.reference.client import ReferenceClient
    from rlhf.reward.client import RewardClient

    process = config_from_args(args, LearnerProcess)
    process.service_tls.check_tls_pair("service-")
    options = ClientOptions(
        timeout=config.rpc_timeout,
        auth_token_file=args.auth_token_file,
        **dataclasses.asdict(process.service_tls),
    )
    # A headless Service name stands for every policy pod: each one gets its own client, so rollouts
    # spread over all of them and every one receives the new weights.
    # The names are resolved again before every step, so pods added (or removed) mid-run are followed.
    hosts: dict[str, str] = {}  # replica address -> the name it came from (TLS checks the name)
    last: dict[str, list[str]] = {}  # each --policy target -> what it resolved to last time

    def discover() -> list[str]:
        found = []
        for target in config.policy_targets:
            # Not resolvable now (a DNS hiccup): keep the pods we know, or let gRPC resolve the name itself.
            replicas = last[target] = resolve_replicas(target) or last.get(target) or [target]
            for replica in replicas:
                hosts[replica] = split_target(target)[0]
                found.append(replica)
        return list(dict.fromkeys(found))

    def connect(replica: str) -> PolicyClient:
        named = dataclasses.replace(options, tls_server_name=options.tls_server_name or hosts[replica])
        return PolicyClient(replica, named if replica not in config.policy_targets else options)

    return Services(
        policies=[connect(replica) for replica in discover()],
        reward=[RewardClient(target, options) for target in config.reward_targets],
        reward_weights=config.reward_weight_values,
        reference=ReferenceClient(config.reference, options),
        timeout=config.service_timeout,
        discover=discover,
        connect=connect,
    )


def run_ppo(args: argparse.Namespace) -> int:
    """One rank of the learner (the only one without torchrun): rank 0 serves the control API and prints."""
    from rlhf.core import distributed

    here = distributed.init_world(args.device, args.dist_timeout)
    try:
        return run_rank(args, here)
    finally:
        distributed.close_world()


def run_rank(args: argparse.Namespace, here) -> int:
    import signal

    from rlhf.core.flags import config_from_args
    from rlhf.core.jsonl import read_jsonl_field
    from rlhf.core.server import ServerOptions, ServerThread, check_port_free
    from rlhf.learner.config import PPOConfig, validate
    from rlhf.learner.control import LearnerControl
    from rlhf.learner.data import prompt_rows
    from rlhf.learner.loop import train
    from rlhf.learner.preflight import check_services
    from rlhf.learner.service import LearnerService
    from rlhf.learner.state import check_out_dir

    # Everything that can be checked without a model or a service first: each fails in one line, at once.
    config = validate(config_from_args(args, PPOConfig))
    check_out_dir(config)
    prompt_rows(config.prompts)
    if config.ptx_data:
        read_jsonl_field(config.ptx_data, "text")
    if here.is_main:
        check_port_free(args.host, args.port)
    services = connect_services(config, args)
    control = LearnerControl(config.steps, config.out)
    services.abort = control.stop_requested

    training = False
    signalled = False

    def stop_after_this_step(signum, frame) -> None:
        """SIGTERM (kubectl delete) or a first Ctrl-C: finish the step, checkpoint, exit (--signal-exit-code)."""
        nonlocal signalled
        if signum == signal.SIGINT and control.stop_requested():
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        if signum == signal.SIGINT and here.is_main:
            print(
                "\nstopping after this step with a checkpoint (Ctrl-C again to abort)" if training else "\nstopping",
                flush=True,
            )
        signalled = True
        control.request_stop()

    signal.signal(signal.SIGTERM, stop_after_this_step)
    signal.signal(signal.SIGINT, stop_after_this_step)
    try:
        check_services(services, config.connect_timeout, config.service_timeout, control.stop_requested)
    except BaseException:
        services.close()
        raise
    training = True
    server = ServerThread(LearnerService(control), ServerOptions.from_args(args)) if here.is_main else None
    try:
        port = server.start() if server else None
    except BaseException:
        services.close()
        raise
    if server:
        print(f"learner control API on {args.host}:{port} (rlhf learner status --target HOST:{port})", flush=True)
    try:
        state = train(config, services, control)
    finally:
        if server:
            server.stop()
        services.close()
    finished = state.step >= config.steps
    code = args.signal_exit_code if signalled and not finished else 0
    if here.is_main:
        print(
            f"done at step {state.step}; policy in {config.out}/policy"
            if finished
            else f"stopped at step {state.step}; continue with --resume",
            flush=True,
        )
    return code


def _client(args: argparse.Namespace):
    from rlhf.core.client import ClientOptions
    from rlhf.learner.client import LearnerClient

    return LearnerClient(args.target, ClientOptions.from_args(args))


def _rpc(call):
    import grpc

    from rlhf.core.client import describe_rpc_error
    from rlhf.core.errors import UserError

    try:
        return call()
    except grpc.RpcError as err:
        raise UserError(describe_rpc_error(err)) from None


def show_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = _rpc(client.status)
    if args.json:
        print(
            json.dumps(
                {
                    "step": status.step,
                    "total_steps": status.total_steps,
                    "phase": status.phase,
                    "weights_version": status.weights_version,
                    "out_dir": status.out_dir,
                    "metrics": dict(status.metrics),
                    "in_flight": [{"step": b.step, "state": b.state, "prompts": b.prompts} for b in status.in_flight],
                }
            )
        )
        return 0
    print(f"{describe_progress(status)}  weights v{status.weights_version}  out {status.out_dir}")
    if status.in_flight:
        print("  in flight: " + ", ".join(f"step {b.step} {b.state} ({b.prompts} prompts)" for b in status.in_flight))
    for name in sorted(status.metrics):
        print(f"  {name:<28} {status.metrics[name]:.6g}")
    return 0


def describe_progress(status) -> str:
    """`3/40 steps done; step 4: update` (the step under way and its phase: generate ... weight_sync),
    `3/40 steps done; checkpoint` (work between steps), or `40/40 steps done`."""
    done = f"{status.step}/{status.total_steps} steps done"
    if status.phase == "done":
        return done
    if status.phase in ("initialize", "checkpoint"):  # between steps (a step ends with its weight sync)
        return f"{done}; {status.phase}"
    return f"{done}; step {status.step + 1}: {status.phase}"


def watch_metrics(args: argparse.Namespace) -> int:
    keys = ("objective/reward", "objective/kl", "objective/entropy", "loss/policy", "loss/value", "time/step")

    def follow():
        with _client(args) as client:
            for update in client.watch():
                if args.json:
                    print(json.dumps({"step": update.step, **dict(update.metrics)}), flush=True)
                else:
                    shown = "  ".join(f"{k}={update.metrics[k]:.4g}" for k in keys if k in update.metrics)
                    print(f"step {update.step}  {shown}", flush=True)

    _rpc(follow)
    return 0


def stop_learner(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = _rpc(client.stop)
    if args.json:
        print(json.dumps({"step": reply.step, "checkpoint_path": reply.checkpoint_path}))
    else:
        print(f"stopped at step {reply.step}; checkpoint {reply.checkpoint_path}")
    return 0
