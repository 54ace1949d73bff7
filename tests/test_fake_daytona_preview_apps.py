"""The fake's preview proxy in front of a real app: the same checks as before, then the app."""

import httpx

from tests.daytona_fixtures import started_sandbox
from tests.test_preview_daytona import app_server  # noqa: F401


def _preview(fake, sandbox_id):
    answer = httpx.get(
        f"{fake.api_url}/sandbox/{sandbox_id}/ports/3000/preview-url",
        headers={"Authorization": f"Bearer {fake.api_key}"},
    ).json()
    return answer["url"].rstrip("/"), answer["token"]


def test_the_app_is_reached_only_with_the_token_and_only_while_started(fake_daytona, app_server):  # noqa: F811
    sandbox_id = started_sandbox(fake_daytona)
    fake_daytona.apps.serve(sandbox_id, 3000, app_server)
    url, token = _preview(fake_daytona, sandbox_id)
    headers = {"X-Daytona-Preview-Token": token, "X-Daytona-Skip-Preview-Warning": "true"}

    assert httpx.get(url + "/page", headers=headers).text == "<h1>app of daytona-app at /page</h1>"
    assert httpx.get(url + "/page", headers={"Accept": "application/json"}).status_code == 401
    seen = httpx.get(url + "/headers", headers=headers).json()
    assert not any(name.lower().startswith("x-daytona") for name in seen)

    fake_daytona.apps.serve(sandbox_id, 3000, None)
    assert httpx.get(url + "/page", headers=headers).status_code == 502  # nothing listens

    fake_daytona.apps.serve(sandbox_id, 3000, app_server)
    fake_daytona.set_state(sandbox_id, "stopped")
    assert httpx.get(url + "/page", headers=headers).status_code == 400  # the runner has no container IP
