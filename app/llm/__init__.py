"""Vision-LLM review through LiteLLM: prompt, call, parse and validate, one retry, Loupe's errors.

One package so that the review's four concerns can be read and changed apart, in the
order a review runs through them:

* `provider`: which model a request may use (LLM_ALLOWED_MODELS), where it connects
  (settings only, never the request), the one LiteLLM import, provider errors → ours;
* `prompt`: Loupe's JPEG as a data URI, the reduced JSON schema, the messages;
* `client`: the call with one retry on an invalid answer, and the two reviews;
* `parse`: a reply → a validated Pydantic model, or why not (sent back to the model);
* `errors`: the `llm_*` errors and `scrub`, which keeps keys and tracebacks out of them.

Endpoints import from here; the modules' other names are for tests and tools.
"""

from app.llm.client import review_group, review_image
from app.llm.errors import LlmError, LlmInvalidOutput, LlmNotConfigured, LlmProviderError, LlmTimeout
from app.llm.prompt import EncodedImage, encode_for_llm
from app.llm.provider import pick_model

__all__ = ["EncodedImage", "LlmError", "LlmInvalidOutput", "LlmNotConfigured", "LlmProviderError", "LlmTimeout",
           "encode_for_llm", "pick_model", "review_group", "review_image"]
