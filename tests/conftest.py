"""Test-wide settings: Prefect runs against its own temporary home (an ephemeral local server,
nothing shared with the user's), MLflow and Ray stay local."""

import os
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_RUN_ID", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # flow runs in tests log warnings and errors only
