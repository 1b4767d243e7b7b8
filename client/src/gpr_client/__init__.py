"""Client of the GPR surrogate API: `SurrogateClient(base_url, api_key, model="name@live")`."""

from gpr_client.client import (
    ApiError,
    Job,
    JobFailedError,
    JobResults,
    Predictions,
    PublishFailedError,
    Suggestions,
    SurrogateClient,
    TrainingData,
)
from gpr_client.training import LoopHistory, LoopRound

__all__ = [
    "ApiError",
    "Job",
    "JobFailedError",
    "JobResults",
    "LoopHistory",
    "LoopRound",
    "Predictions",
    "PublishFailedError",
    "Suggestions",
    "SurrogateClient",
    "TrainingData",
]
