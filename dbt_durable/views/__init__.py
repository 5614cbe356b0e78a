"""Views of runs for people: the data behind ``status``, ``explain``, the dashboard and metrics
(:mod:`dbt_durable.views.model`), and their rendering in a terminal (:mod:`dbt_durable.views.render`)."""
