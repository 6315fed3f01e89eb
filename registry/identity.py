"""Who moves an alias: the user the tracking server authenticated, and whether they may.

With MLflow's built-in authentication (``mlflow server --app-name basic-auth``) the server
names the user whose credentials (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``) it accepted, and
moving ``champion`` needs MANAGE on the registered model: MLflow itself lets EDIT set an
alias, so the check is made here, before the move. Without authentication (an embedded store,
a server without the auth app) there is no one to ask: the name given, ``VITEDIT_USER`` or the
login name is recorded, marked unauthenticated.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass

import requests
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from .client import Connection
from .errors import PermissionRefusedError, RegistryError, RegistryUnavailableError

CURRENT_USER = "/api/2.0/mlflow/users/current"
USER_PERMISSION = "/api/3.0/mlflow/users/permissions/get"
NEEDED = "MANAGE"


@dataclass(frozen=True)
class Identity:
    """The promoter as recorded: a name, and whether the server vouched for it."""

    name: str
    authenticated: bool
    admin: bool = False


def declared_user() -> str:
    """``VITEDIT_USER`` (set by automation) or the login name: what an unauthenticated
    store records."""
    return os.environ.get("VITEDIT_USER") or getpass.getuser()


def identify(conn: Connection, fallback: str | None = None) -> Identity:
    """The authenticated user of ``conn``'s server, or ``fallback`` (default
    ``declared_user()``) unauthenticated where the server authenticates no one."""
    if not conn.tracking_uri.startswith(("http://", "https://")):
        return Identity(fallback or declared_user(), authenticated=False)
    response = _get(conn, CURRENT_USER, {})
    if response.status_code == 404:  # no auth app: the route does not exist
        return Identity(fallback or declared_user(), authenticated=False)
    if response.status_code == 401:
        raise RegistryError(f"the MLflow server {conn.tracking_uri} refused the credentials: "
                            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    user = _json(conn, response, "who am I")["user"]
    return Identity(user["username"], authenticated=True, admin=bool(user.get("is_admin")))


def require_manage(conn: Connection, name: str, who: Identity, action: str) -> None:
    """Refuse (exit 3) unless ``who`` holds MANAGE on registered model ``name``; admins do."""
    if not who.authenticated or who.admin:
        return
    response = _get(conn, USER_PERMISSION, {"username": who.name,
                                            "resource_type": "registered_model",
                                            "resource_id": name})
    granted = _json(conn, response, "read permissions").get("permission", "NO_PERMISSIONS")
    if granted != NEEDED:
        raise PermissionRefusedError(
            f"{who.name} may not {action} {name}: it needs {NEEDED} permission on the "
            f"registered model, the MLflow server grants {granted}")


def _get(conn: Connection, endpoint: str, params: dict[str, str]) -> requests.Response:
    try:
        return http_request(get_default_host_creds(conn.tracking_uri), endpoint, "GET",
                            params=params, raise_on_status=False)
    except Exception as exc:  # noqa: BLE001 - MLflow wraps connection failures its own way
        raise RegistryUnavailableError(f"MLflow server {conn.tracking_uri} did not answer "
                                       f"{endpoint}: {type(exc).__name__}") from exc


def _json(conn: Connection, response: requests.Response, what: str) -> dict:
    if response.status_code != 200:
        raise RegistryError(f"{what} on {conn.tracking_uri} failed: HTTP "
                            f"{response.status_code} {response.text[:200]}")
    return response.json()
