"""Azure OpenAI's wire format: OpenAI's bodies behind Azure's paths, keys and errors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._records import ScenarioState
from ._base import RequestError, Route, Wire, bearer, query_value
from .openai import AZURE_FILTERED, OpenAIFormat

_AZURE_NO_VERSION = "The api-version query parameter (?api-version=) is required for all requests."
_AZURE_NO_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource."
)


class AzureFormat(OpenAIFormat):
    """Azure OpenAI: OpenAI's bodies behind Azure's paths, keys and error envelope."""

    name: Wire = "azure"
    kinds: Mapping[str, str] = {"azure": ""}
    missing_auth_message = _AZURE_NO_KEY

    def authorized(self, headers: Mapping[str, str], query: str, route: Route) -> bool:
        if headers.get("api-key", "").strip():
            return True
        # The v1 API also takes the key (or an Entra token) as a bearer token.
        return not route.deployment and bearer(headers)

    def check_request(self, headers: Mapping[str, str], query: str, route: Route) -> None:
        if route.dated and not query_value(query, "api-version"):
            raise RequestError(400, _AZURE_NO_VERSION, code="MissingApiVersionParameter")

    def auth_error(self) -> RequestError:
        return RequestError(401, self.missing_auth_message, code="401")

    def not_found_message(self, method: str, path: str) -> str:
        return "Resource not found"

    def error_body(self, error: RequestError, request_id: str) -> Any:
        body: dict[str, Any] = {"code": error.code or str(error.status), "message": error.message}
        if error.param is not None:
            body["param"] = error.param
            body["type"] = super().error_body(error, request_id)["error"]["type"]
        if error.code == "content_filter":
            body["status"] = error.status
            body["innererror"] = {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": AZURE_FILTERED,
            }
        return {"error": body}

    def fault_error(
        self, status: int, state: ScenarioState, retry_after: float | None
    ) -> RequestError:
        if status == 404:
            return RequestError(
                404,
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
                code="DeploymentNotFound",
            )
        if status == 429:
            wait = math.ceil(retry_after or 1.0)
            return RequestError(
                429,
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API "
                "version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 "
                f"pricing tier. Please retry after {wait} seconds.",
                code="429",
            )
        return RequestError(status, super().fault_error(status, state, retry_after).message)

    def prompt_blocked_error(self) -> RequestError | None:
        return RequestError(
            400,
            "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy. Please modify your prompt and retry.",
            param="prompt",
            code="content_filter",
        )

    def _with_model(self, route: Route, body: Any) -> Any:
        # The dated API names the deployment in the path; a body "model" is ignored.
        if route.deployment and isinstance(body, dict):
            return {**body, "model": route.deployment}
        return body
