"""Test-wide settings: the tests get a home folder of their own (Ray's ~/.ray/auth_token, caches and any
other file a tool writes under ~ land there, never in the user's), Prefect runs against its own temporary
home (an ephemeral local server, nothing shared with the user's), Ray keeps its files in a folder of its
own, MLflow and Ray stay local. The folders are removed when the test process exits."""

import atexit
import os
import shutil
import tempfile


def temporary_folder(name: str) -> str:
    """A new folder removed when the test process exits (a short path: Ray puts Unix sockets under its own)."""
    path = tempfile.mkdtemp(prefix=f"svq-{name}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)  # registered first, so it runs after the tools' own
    return path


os.environ["HOME"] = temporary_folder("home")
with open(os.path.join(os.environ["HOME"], ".gitconfig"), "w") as _config:  # git and `dvc exp` commit in workspaces
    _config.write("[user]\n\tname = sparse-vqvae tests\n\temail = tests@localhost\n")
os.environ["PREFECT_HOME"] = temporary_folder("prefect")
# Ray's sessions, sockets and its "current cluster" address file (/tmp/ray by default, where a local `ray.init()`
# looks for a cluster to join): a cluster a test starts and kills is then never found by the user's Ray.
os.environ["RAY_TMPDIR"] = temporary_folder("ray")
for _variable in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",  # would lead back to ~
                  "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "PREFECT_API_URL", "MLFLOW_TRACKING_URI",
                  "MLFLOW_RUN_ID"):
    os.environ.pop(_variable, None)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # flow runs in tests log warnings and errors only
