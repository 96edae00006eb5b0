"""The API calls behind `rlhf k8s`, through the official kubernetes client.

Every failure a user can cause (no kubeconfig, an unknown context, an API server that doesn't answer,
a missing namespace or Job, a forbidden call) becomes one UserError line instead of a traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import yaml

from rlhf.core.errors import UserError

TIMEOUT = (5, 30)  # seconds: connect, read
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"  # on an Indexed Job's pods
# Rank 0 of the learner: the pod of index 0, the only one that serves (as the learner Service selects).
LEARNER_SELECTOR = f"app.kubernetes.io/part-of=rlhf,app.kubernetes.io/name=learner,{INDEX_LABEL}=0"
AUTH_SECRET = "rlhf-auth"


def connect(kubeconfig: str | None, context: str | None, namespace: str) -> Cluster:
    """A Cluster for the kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config), or in-cluster credentials."""
    from kubernetes import client, config

    # One retry, quietly: an unreachable server should cost seconds and print one line, not a log per try.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    configuration = client.Configuration()
    configuration.retries = 1
    paths = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    found = [str(Path(p).expanduser()) for p in paths.split(os.pathsep) if p and Path(p).expanduser().is_file()]
    try:
        if found:
            contexts = [c["name"] for c in config.list_kube_config_contexts(os.pathsep.join(found))[0]]
            if context and context not in contexts:
                raise UserError(f"no context {context!r} in {paths}; it has: {', '.join(contexts) or 'none'}")
            api = config.new_client_from_config(
                config_file=os.pathsep.join(found),
                context=context,
                persist_config=False,
                client_configuration=configuration,
            )
        elif not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            api = client.ApiClient(configuration)
        else:
            raise UserError(f"no kubeconfig at {paths}: pass --kubeconfig FILE or set KUBECONFIG")
    except config.ConfigException as err:
        raise UserError(f"bad kubeconfig ({paths}): {err}") from err
    except yaml.YAMLError as err:
        raise UserError(f"kubeconfig {paths} is not valid YAML: {getattr(err, 'problem', err)}") from err
    return Cluster(api, namespace)


class Cluster:
    """One namespace of one cluster."""

    def __init__(self, api_client, namespace: str):
        from kubernetes import client

        self.api_client = api_client
        self.namespace = namespace
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    @contextmanager
    def calling(self, what: str, by_status: dict[int, str] | None = None) -> Iterator[None]:
        """Turn the client's exceptions into one-line UserErrors: `by_status` words the expected ones."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            yield
        except ApiException as err:
            if err.status == 0:  # transport failures (TLS, websocket) arrive as status 0
                raise self._unreachable(err.reason) from err
            if by_status and err.status in by_status:
                raise UserError(by_status[err.status]) from err
            raise UserError(f"{what}: {_api_message(err)}") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise self._unreachable(getattr(err, "reason", err)) from err

    def _unreachable(self, reason: object) -> UserError:
        host = self.api_client.configuration.host
        text = str(reason)
        text = text[text.index("[Errno") :] if "[Errno" in text else text
        return UserError(f"cannot reach the Kubernetes API server at {host}: {text.rstrip(')')}")

    def check_namespace(self) -> None:
        """Fail early, and clearly, when the namespace doesn't exist (a list there would just be empty)."""
        from kubernetes.client.exceptions import ApiException

        missing = (
            f"namespace {self.namespace} not found: apply an overlay first "
            "(kubectl apply -k k8s/overlays/kind) or pass --namespace"
        )
        try:
            with self.calling(f"reading namespace {self.namespace}", {404: missing}):
                self.core.read_namespace(name=self.namespace, _request_timeout=TIMEOUT)
        except UserError as err:
            if isinstance(err.__cause__, ApiException) and err.__cause__.status == 403:
                return  # this user may not read namespaces, but may still work in this one
            raise

    def create_job(self, job):
        name = job.metadata.name
        exists = (
            f"job {name} already exists in namespace {self.namespace}: "
            f"delete it first (rlhf k8s delete {name}) or pass --name"
        )
        with self.calling(f"creating job {name}", {409: exists}):
            return self.batch.create_namespaced_job(namespace=self.namespace, body=job, _request_timeout=TIMEOUT)

    def delete_job(self, name: str) -> None:
        """Delete the Job and, in the background, its pods: they get SIGTERM and their grace period."""
        with self.calling(f"deleting job {name}", {404: f"no job {name} in namespace {self.namespace}"}):
            # The API's default for Jobs orphans the pods; kubectl asks for Background too.
            self.batch.delete_namespaced_job(
                name=name, namespace=self.namespace, propagation_policy="Background", _request_timeout=TIMEOUT
            )

    def jobs(self) -> list:
        with self.calling("listing jobs"):
            return self.batch.list_namespaced_job(
                namespace=self.namespace, label_selector="app.kubernetes.io/part-of=rlhf", _request_timeout=TIMEOUT
            ).items

    def pods(self, selector: str = "app.kubernetes.io/part-of=rlhf") -> list:
        """Pods matching the selector, oldest first."""
        with self.calling("listing pods"):
            items = self.core.list_namespaced_pod(
                namespace=self.namespace, label_selector=selector, _request_timeout=TIMEOUT
            ).items
        return sorted(items, key=lambda p: (p.metadata.creation_timestamp or 0, p.metadata.name))

    def job_pods(self, job: str) -> list:
        return self.pods(f"{JOB_NAME_LABEL}={job}")

    def newest_job_pod(self, job: str):
        """The Job's newest pod of index 0 where it has one (the learner's rank 0, which logs the run), else its
        newest pod."""
        pods = self.job_pods(job)
        if not pods:
            raise UserError(f"job {job} has no pods in namespace {self.namespace} (rlhf k8s status)")
        first = [p for p in pods if (p.metadata.labels or {}).get(INDEX_LABEL) == "0"]
        return (first or pods)[-1]

    def running_learner_pod(self):
        running = [p for p in self.pods(LEARNER_SELECTOR) if (p.status and p.status.phase) == "Running"]
        return running[-1] if running else None

    def auth_token(self) -> str | None:
        """The services' bearer token from the rlhf-auth Secret, if this user may read it."""
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.core.read_namespaced_secret(
                name=AUTH_SECRET, namespace=self.namespace, _request_timeout=TIMEOUT
            )
        except ApiException:
            return None
        encoded = (secret.data or {}).get("token")
        return base64.b64decode(encoded).decode().strip() if encoded else None

    def logs(self, pod: str, follow: bool, tail: int | None) -> Iterator[str]:
        """The pod's log lines; with follow, until the container ends."""
        from kubernetes import watch

        with self.calling(f"reading logs of {pod}"):
            if not follow:
                text = self.core.read_namespaced_pod_log(
                    name=pod, namespace=self.namespace, tail_lines=tail, _request_timeout=TIMEOUT
                )
                yield from text.splitlines()
                return
            yield from watch.Watch().stream(
                self.core.read_namespaced_pod_log, name=pod, namespace=self.namespace, tail_lines=tail
            )


def _api_message(err) -> str:
    """`404 Not Found: jobs.batch "ppo" not found`, from the Status object the API server returns."""
    message = ""
    with suppress(ValueError, AttributeError):
        message = json.loads(err.body or "{}").get("message", "")
    return f"{err.status} {err.reason}" + (f": {message}" if message else "")
