"""The ``dbt-durable ui`` dashboard (needs the ``ui`` extra: starlette and uvicorn)."""
