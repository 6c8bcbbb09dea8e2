"""One module per resource, each exporting an ``Endpoints`` table."""

from api.routes.api_keys import api_keys
from api.routes.deployment_stats import deployment_stats
from api.routes.deployments import deployments
from api.routes.files import files
from api.routes.health import health
from api.routes.inference import inference
from api.routes.jobs import jobs
from api.routes.models import models
from api.routes.predictions import predictions
from api.routes.usage import usage
from api.routes.webhooks import webhooks

ENDPOINT_TABLES = [
    health,
    api_keys,
    files,
    jobs,
    models,
    deployments,
    deployment_stats,
    inference,
    predictions,
    webhooks,
    usage,
]
