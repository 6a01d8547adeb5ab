"""Operating a deployment: seeing it (dashboard and its snapshot, exporter and a worker's metrics,
health, trace), repairing it (dlq, audit) and securing it (acl: the roles and their Redis users)."""
