#!/bin/sh
# First start of the Postgres volume only: a role and a database for MLflow next to Prefect's.
set -eu
psql -v ON_ERROR_STOP=1 -v pw="$MLFLOW_DB_PASSWORD" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'pw';
CREATE DATABASE mlflow OWNER mlflow;
SQL
