"""Every optional dependency, when missing, fails with an ImportError naming its extra.

One child interpreter runs every case: for each, it hides the dependency
(``sys.modules[name] = None`` makes ``import name`` fail as if it were not installed),
forgets every podshare module imported so far, and runs the statement that needs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# (hidden module, the statement that needs it, the install hint its error must name)
CASES = [
    ("pycrdt", "from podshare.crdt import YDoc", "pip install 'podshare[yjs]'"),
    ("pycrdt", "import podshare.yjs", "pip install 'podshare[yjs]'"),
    ("pycrdt.websocket", "import podshare.yjs.server", "pip install 'podshare[yjs-server]'"),
    (
        "hypothesis",
        "from podshare.testing import check_merger; from podshare.crdt import GSet; "
        "check_merger(GSet, None)",
        "pip install 'podshare[testing]'",
    ),
    ("redis", "import podshare.transport.redis", "pip install 'podshare[redis]'"),
    ("redis", "import podshare.persistence.redis", "pip install 'podshare[redis]'"),
    ("nats", "import podshare.transport.nats", "pip install 'podshare[nats]'"),
    ("nats", "import podshare.persistence.nats", "pip install 'podshare[nats]'"),
    (
        "prometheus_client",
        "import podshare.contrib.prometheus",
        "pip install 'podshare[prometheus]'",
    ),
    (
        "opentelemetry",
        "import podshare.contrib.opentelemetry",
        "pip install 'podshare[opentelemetry]'",
    ),
    (
        "cryptography",
        "from podshare.transport.auth import Authenticator; Authenticator(b'k' * 32, encrypt=True)",
        "pip install 'podshare[encryption]'",
    ),
    # The examples that need more than podshare say what to install, and exit.
    *(
        (hidden, f"import runpy; runpy.run_path({str(EXAMPLES / name)!r})", hint)
        for hidden, name, hint in [
            ("websockets", "ws_routing.py", "pip install 'podshare[examples]'"),
            ("fastapi", "fastapi_app.py", "pip install 'podshare[examples]'"),
            ("flask", "flask_app.py", "pip install 'podshare[examples]'"),
            ("pycrdt", "collab_server.py", "pip install 'podshare[yjs-server]'"),
        ]
    ),
]

_CHILD = textwrap.dedent(
    """
    import json, sys
    results = []
    for hidden, statement in json.loads(sys.argv[1]):
        for name in [n for n in sys.modules if n.split(".")[0] == "podshare"
                     or n == hidden or n.startswith(hidden + ".")]:
            del sys.modules[name]
        sys.modules[hidden] = None
        try:
            exec(statement, {})
        except (Exception, SystemExit) as exc:
            results.append([type(exc).__name__, str(exc)])
        else:
            results.append(["no error", ""])
        finally:
            del sys.modules[hidden]
            for name in [n for n in sys.modules if n.split(".")[0] == "podshare"]:
                del sys.modules[name]
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def outcomes() -> list[list[str]]:
    """``[exception type, message]`` for each case, in order."""
    cases = json.dumps([[hidden, statement] for hidden, statement, _ in CASES])
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, cases],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found: list[list[str]] = json.loads(result.stdout)
    return found


@pytest.mark.parametrize(
    ("index", "hidden", "hint"),
    [(i, hidden, hint) for i, (hidden, _, hint) in enumerate(CASES)],
    ids=[f"{hidden}:{statement.split(';')[0]}" for hidden, statement, _ in CASES],
)
def test_a_missing_dependency_names_its_extra(
    outcomes: list[list[str]], index: int, hidden: str, hint: str
) -> None:
    kind, message = outcomes[index]
    assert kind in ("ImportError", "ConfigurationError", "SystemExit"), (kind, message)
    assert hint in message, (hidden, message)
