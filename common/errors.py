"""Every `ApplicationError` type Cairn raises, with whether Temporal retries it, in one place.

The type strings are public: workflows, retry policies, tests, dashboards and people match on them, so
never rename one; add a new one. Workflows, activities and tests import the names from here. Whether an
error is retried is decided where it is raised (`non_retryable=True`, or `next_retry_delay` from a
server's Retry-After); the tree records that decision.

    ApplicationError type            retried   raised when
    ├── the run (workflows/)
    │   ├── ResearchFailed           no        the run failed; the message says while doing what, and why
    │   ├── InvalidInput             no        a workflow's input is not exactly one valid object; also
    │   │                                      report.save and corpus_search given a bad tenant or scope
    │   ├── QuotaExceeded            no        runs.admit: a scheduled run over its tenant's concurrent-run
    │   │                                      limit or daily allowance (the message names which)
    │   ├── MalformedModelOutput     no        a model's JSON failed validation on every re-ask
    │   └── MalformedFinding         no        the researcher's finding failed validation on every re-ask
    ├── payloads (common/plugin.py)
    │   ├── PayloadUndecodable       no        a payload's bytes do not decode (unknown encoding, wrong type)
    │   └── PayloadUnavailable       no        a payload reference cannot be followed (forged, another store)
    ├── llm.chat and the researcher's model calls (activities/llm.py)
    │   ├── LLMRateLimited           yes       429, after Retry-After
    │   ├── LLMServerError           yes       5xx, honouring Retry-After
    │   ├── LLMTimeout               yes
    │   ├── LLMConnectionError       yes
    │   ├── LLMBadRequest            no        400, 422
    │   ├── LLMAuthenticationFailed  no        401: OPENAI_API_KEY
    │   ├── LLMPermissionDenied      no        403
    │   ├── LLMModelNotFound         no        404: the model name or OPENAI_BASE_URL
    │   ├── LLMNotConfigured         no        neither OPENAI_API_KEY nor OPENAI_BASE_URL set
    │   ├── LLMOutputTruncated       no        the answer stopped at the output token limit
    │   ├── LLMContentFiltered       no        the server's content filter withheld the answer
    │   └── LLMToolsUnsupported      no        the researcher's model cannot call tools
    ├── the researcher's tools (activities/web_search.py, fetch.py, corpus/, researcher/)
    │   ├── SearchRateLimited        yes       after Retry-After
    │   ├── SearchUnavailable        yes       5xx, connection failure, timeout
    │   ├── SearchAuthFailed         no
    │   ├── SearchQuotaExceeded      no
    │   ├── SearchBadRequest         no
    │   ├── SearchNotConfigured      no
    │   ├── FetchRateLimited         yes       429, after Retry-After
    │   ├── FetchTimeout             yes
    │   ├── FetchUnavailable         yes       connection refused or reset, a DNS hiccup
    │   ├── FetchHTTPError           5xx yes, 4xx no
    │   ├── FetchRefused             no        not http(s), or an address the configuration does not allow
    │   ├── FetchUnsupportedType     no        not text (an image, a PDF, a binary)
    │   ├── FetchUnsupportedEncoding no        a Content-Encoding Cairn does not decode
    │   ├── FetchUnsupportedCharset  no        a charset that is not a text encoding of the web
    │   ├── FetchHostNotFound        no
    │   ├── FetchTLSFailed           no
    │   ├── FetchTooManyRedirects    no
    │   ├── FetchEmpty               no        the page has no text
    │   ├── CorpusUnavailable        yes       the corpus store does not answer
    │   └── ToolBadArguments         no        a tool call's arguments are missing or not valid JSON
    │       (a tool failure retrying cannot help, or the last attempt's, reaches the model as a typed
    │        tool result instead; ToolRefused and ToolFailed are such results, never raised)
    └── sandbox.exec (activities/sandbox/)
        ├── SandboxEngineUnavailable yes       the Docker engine may come back
        ├── SandboxInternalError     yes       the sandbox machinery misbehaved
        ├── SandboxImageMissing      no        someone must run `cairn sandbox build`
        ├── SandboxInvalidRequest    no        the same request fails the same way
        └── SandboxReportInvalid     no        the supervisor's report does not fit its schema
"""

from typing import Final

RESEARCH_FAILED: Final = "ResearchFailed"
INVALID_INPUT: Final = "InvalidInput"
# A scheduled run its tenant's quotas do not admit now (activities/admission.py): retrying the same
# start cannot help; the next scheduled run is admitted afresh.
QUOTA_EXCEEDED: Final = "QuotaExceeded"
MALFORMED_MODEL_OUTPUT: Final = "MalformedModelOutput"
MALFORMED_FINDING: Final = "MalformedFinding"

PAYLOAD_UNDECODABLE: Final = "PayloadUndecodable"
PAYLOAD_UNAVAILABLE: Final = "PayloadUnavailable"

LLM_RATE_LIMITED: Final = "LLMRateLimited"
LLM_SERVER: Final = "LLMServerError"
LLM_TIMEOUT: Final = "LLMTimeout"
LLM_CONNECTION: Final = "LLMConnectionError"
LLM_BAD_REQUEST: Final = "LLMBadRequest"
LLM_AUTH: Final = "LLMAuthenticationFailed"
LLM_FORBIDDEN: Final = "LLMPermissionDenied"
LLM_NOT_FOUND: Final = "LLMModelNotFound"
LLM_NOT_CONFIGURED: Final = "LLMNotConfigured"
LLM_TRUNCATED: Final = "LLMOutputTruncated"
LLM_CONTENT_FILTERED: Final = "LLMContentFiltered"
LLM_TOOLS_UNSUPPORTED: Final = "LLMToolsUnsupported"

SEARCH_RATE_LIMITED: Final = "SearchRateLimited"
SEARCH_UNAVAILABLE: Final = "SearchUnavailable"
SEARCH_AUTH: Final = "SearchAuthFailed"
SEARCH_QUOTA: Final = "SearchQuotaExceeded"
SEARCH_BAD_REQUEST: Final = "SearchBadRequest"
SEARCH_NOT_CONFIGURED: Final = "SearchNotConfigured"

FETCH_RATE_LIMITED: Final = "FetchRateLimited"
FETCH_TIMEOUT: Final = "FetchTimeout"
FETCH_UNAVAILABLE: Final = "FetchUnavailable"
FETCH_HTTP: Final = "FetchHTTPError"
FETCH_REFUSED: Final = "FetchRefused"
FETCH_UNSUPPORTED_TYPE: Final = "FetchUnsupportedType"
FETCH_UNSUPPORTED_ENCODING: Final = "FetchUnsupportedEncoding"
FETCH_UNSUPPORTED_CHARSET: Final = "FetchUnsupportedCharset"
FETCH_HOST_NOT_FOUND: Final = "FetchHostNotFound"
FETCH_TLS: Final = "FetchTLSFailed"
FETCH_TOO_MANY_REDIRECTS: Final = "FetchTooManyRedirects"
FETCH_EMPTY: Final = "FetchEmpty"
# The operator's MCP servers (activities/mcp_tools.py): a server that does not answer or a session that
# broke (retried); a tool that answered with an error, or a name no configured server has (the model
# reads either).
MCP_UNAVAILABLE: Final = "McpUnavailable"
MCP_TOOL_ERROR: Final = "McpToolError"
MCP_UNKNOWN_TOOL: Final = "McpUnknownTool"
# A URL the run's domain policy refuses (common/domains.py): never retried, the model reads why.
DOMAIN_BLOCKED: Final = "DomainBlocked"

CORPUS_UNAVAILABLE: Final = "CorpusUnavailable"
TOOL_BAD_ARGUMENTS: Final = "ToolBadArguments"
# Tool results the model reads (never raised): a call that will not run, a tool that failed for good.
TOOL_REFUSED: Final = "ToolRefused"
TOOL_FAILED: Final = "ToolFailed"

SANDBOX_ENGINE_UNAVAILABLE: Final = "SandboxEngineUnavailable"
SANDBOX_INTERNAL: Final = "SandboxInternalError"
SANDBOX_IMAGE_MISSING: Final = "SandboxImageMissing"
SANDBOX_INVALID_REQUEST: Final = "SandboxInvalidRequest"
SANDBOX_REPORT_INVALID: Final = "SandboxReportInvalid"
