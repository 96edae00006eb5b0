"""`rlhf k8s`: render the manifests, and submit, watch and stop training Jobs on a cluster.

rlhf k8s render --overlay kind | kubectl apply -f -
rlhf k8s render --overlay gpu --component mtls --component mtls/cert-manager | kubectl apply -f -
rlhf k8s submit ppo --overlay kind --steps 50
rlhf k8s submit ppo --overlay gpu --nodes 2 --gpus-per-node 8 --dry-run
rlhf k8s status
rlhf k8s logs ppo -f
rlhf k8s delete ppo
"""

from __future__ import annotations

import argparse
import sys
import time

import yaml

from rlhf.core.errors import UserError
from rlhf.core.flags import Flag, choices, config_flags, value_type
from rlhf.k8s import manifests


def stage_configs() -> dict[str, tuple[type, ...]]:
    """The configs each Job's `rlhf train STAGE` takes its flags from: `submit STAGE` takes each of them too."""
    from rlhf.core.server import ServerOptions
    from rlhf.learner.config import LearnerProcess, PPOConfig
    from rlhf.training.config import RewardTrainConfig, SFTConfig

    return {"sft": (SFTConfig,), "rm": (RewardTrainConfig,), "ppo": (PPOConfig, ServerOptions, LearnerProcess)}


def add_override_argument(group, flag: Flag) -> None:
    """A flag of `rlhf train` as a Job override: None, the overlay's value, unless given (bools: --flag/--no-flag)."""
    if flag.hint is bool:
        group.add_argument(flag.name, dest=flag.dest, action=argparse.BooleanOptionalAction, help=flag.help)
        return
    values = choices(flag.hint)
    group.add_argument(flag.name, dest=flag.dest, type=value_type(flag.hint), choices=values, help=flag.help)


def job_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The given stage flags as merge_args overrides: a bool that `rlhf train` turns off with --no-flag
    comes with that flag set or removed."""
    overrides: dict[str, object] = {}
    for flag in args.flags:
        name, value = flag.name.removeprefix("--"), getattr(args, flag.dest)
        overrides[name] = value
        if flag.negatable and value is not None:
            overrides.update({name: value, f"no-{name}": not value})
    return overrides


def register(commands) -> None:
    k8s = commands.top.add_parser("k8s", help="run on Kubernetes: render manifests, submit and follow Jobs")
    sub = k8s.add_subparsers(dest="k8s_command", metavar="COMMAND", required=True)

    render = sub.add_parser("render", help="print an overlay's manifests (kubectl kustomize)")
    render.add_argument("--overlay", required=True, help="kind, gpu, kind/jobs or gpu/jobs")
    _component_option(render)
    _manifests_option(render)
    render.set_defaults(func=cmd_render)

    submit = sub.add_parser("submit", help="create a training Job: sft, rm or ppo")
    stages = submit.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, configs in stage_configs().items():
        p = stages.add_parser(stage, help=f"the {stage} Job; flags not given keep the overlay's values")
        train = p.add_argument_group(f"rlhf train {stage} flags")
        flags = [flag for config in configs for flag in config_flags(config)]
        for flag in flags:
            add_override_argument(train, flag)
        if stage == "ppo":
            world = p.add_argument_group("distributed learner (an Indexed Job, one pod per node)")
            world.add_argument(
                "--nodes",
                type=int,
                help="learner pods; above 1 a failure fails the whole Job "
                "(default: the overlay's, 1 on gpu, 2 on kind)",
            )
            world.add_argument(
                "--gpus-per-node",
                type=int,
                help="processes per pod, and the GPUs each pod asks "
                "for where the overlay asks for GPUs (default: the overlay's, 1)",
            )
        p.add_argument("extra", nargs="*", metavar="-- FLAG", help="further `rlhf train` flags, after --")
        p.add_argument("--overlay", default="kind", help="whose Job to start from: kind or gpu (default kind)")
        p.add_argument("--name", help=f"Job name (default {stage})")
        p.add_argument("--image", help="container image (default: the overlay's)")
        p.add_argument("--dry-run", action="store_true", help="print the Job instead of creating it")
        _component_option(p)
        _manifests_option(p)
        _cluster_options(p)
        p.set_defaults(func=cmd_submit, flags=flags)

    status = sub.add_parser("status", help="Job and pod phases, and the learner's step")
    status.add_argument("--learner", help="learner HOST:PORT (default: port-forward to the running learner pod)")
    status.add_argument("--auth-token-file", help="bearer token for the learner (default: the rlhf-auth Secret)")
    _cluster_options(status)
    status.set_defaults(func=cmd_status)

    logs = sub.add_parser("logs", help="print a Job's logs (its newest pod)")
    logs.add_argument("job", nargs="?", default="ppo", help="Job name (default ppo)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the pod ends")
    logs.add_argument("--tail", type=int, help="only the last N lines")
    _cluster_options(logs)
    logs.set_defaults(func=cmd_logs)

    delete = sub.add_parser("delete", help="delete a Job: its pods get SIGTERM (the learner checkpoints)")
    delete.add_argument("job", nargs="?", default="ppo", help="Job name (default ppo)")
    delete.add_argument("--wait", action="store_true", help="return once the Job's pods are gone")
    delete.add_argument("--timeout", type=float, default=900.0, help="seconds --wait waits at most")
    _cluster_options(delete)
    delete.set_defaults(func=cmd_delete)


def _component_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--component",
        action="append",
        default=[],
        metavar="NAME",
        help="add k8s/components/NAME on top of the overlay, e.g. mtls or mtls/cert-manager (repeatable)",
    )


def _manifests_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifests", help="the k8s/ dir (default: this checkout's, or $RLHF_K8S_DIR)")


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster")
    g.add_argument("--namespace", "-n", default="rlhf", help="namespace (default rlhf)")
    g.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
    g.add_argument("--context", help="kubeconfig context (default: its current context)")


def _connect(args: argparse.Namespace):
    from rlhf.k8s.cluster import connect

    cluster = connect(args.kubeconfig, args.context, args.namespace)
    cluster.check_namespace()
    return cluster


def cmd_render(args: argparse.Namespace) -> int:
    sys.stdout.write(manifests.render(manifests.find_manifests(args.manifests), args.overlay, args.component))
    return 0


def build_submitted_job(args: argparse.Namespace):
    """The V1Job that `submit` creates: the overlay's Job for the stage, with the flags as its args (and for
    ppo, its pods and processes)."""
    nodes = getattr(args, "nodes", None)
    components = list(args.component)
    if nodes and nodes > 1 and manifests.MULTI_NODE_COMPONENT not in components:
        components.append(manifests.MULTI_NODE_COMPONENT)  # no-op where the overlay has it already
    template = manifests.job_template(manifests.find_manifests(args.manifests), args.overlay, args.stage, components)
    if args.stage == "ppo":
        template = manifests.distribute_learner(template, nodes, args.gpus_per_node, args.name)
    overrides = job_overrides(args)
    extra = [word for word in args.extra if word != "--"]
    return manifests.build_job(
        template, overrides, name=args.name, namespace=args.namespace, image=args.image, extra=extra
    )


def cmd_submit(args: argparse.Namespace) -> int:
    job = build_submitted_job(args)
    if args.dry_run:
        sys.stdout.write(yaml.safe_dump(manifests.job_to_dict(job), sort_keys=False))
        return 0
    created = _connect(args).create_job(job)
    name = created.metadata.name
    print(f"job/{name} created in namespace {args.namespace}; follow it with: rlhf k8s logs {name} -f")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from rlhf.k8s.status import format_status, learner_line

    cluster = _connect(args)
    jobs, pods = cluster.jobs(), cluster.pods()
    print(format_status(args.namespace, jobs, pods, learner_line(cluster, args.learner, args.auth_token_file)))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    cluster = _connect(args)
    pod = cluster.newest_job_pod(args.job)
    waited = 0.0
    while args.follow and (pod.status and pod.status.phase) == "Pending" and waited < 300:
        if waited == 0:
            print(f"waiting for pod {pod.metadata.name} to start...", file=sys.stderr)
        time.sleep(2.0)
        waited += 2.0
        pod = cluster.newest_job_pod(args.job)
    for line in cluster.logs(pod.metadata.name, follow=args.follow, tail=args.tail):
        print(line, flush=True)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    cluster = _connect(args)
    cluster.delete_job(args.job)
    print(f"job/{args.job} deleted; its pods get SIGTERM (the learner writes a checkpoint before it exits)")
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while cluster.job_pods(args.job):
            if time.monotonic() > deadline:
                raise UserError(f"job {args.job}'s pods still exist after {args.timeout:.0f}s")
            time.sleep(2.0)
        print(f"job/{args.job}'s pods are gone")
    return 0
