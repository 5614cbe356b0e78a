{#- Deterministic, realistic-looking raw data, generated in the database (no seed files). -#}

{% macro create_raw_orders(relation, n) -%}
$gen$CREATE TABLE IF NOT EXISTS {{ relation }} AS
SELECT g AS order_id,
       1 + (g * 7919) % 1200 AS customer_id,
       (ARRAY['books', 'garden', 'kitchen', 'toys', 'music', 'sports'])[1 + (g * 31) % 6] AS category,
       round((5 + (g * 104729) % 49500 / 100.0)::numeric, 2) AS amount,
       timestamp '2026-01-01' + ((g * 7) % 320) * interval '1 day' + (g % 86400) * interval '1 second' AS ordered_at,
       -- about 3% of the feed are re-deliveries of an earlier order (the dedupe step removes them)
       CASE WHEN g % 33 = 0 THEN g - 17 ELSE g END AS source_order_id
FROM generate_series(1, {{ n }}) AS g$gen$
{%- endmacro %}

{% macro create_raw_docs(relation) -%}
$gen$CREATE TABLE IF NOT EXISTS {{ relation }} AS
SELECT d AS doc_id,
       'Product note ' || d || ': ' ||
       (ARRAY['durable pipelines resume after a crash', 'vector search finds similar products',
              'garden tools for spring planting', 'kitchen knives and cutting boards',
              'children toys made of wood', 'running shoes for long distance sports'])[1 + d % 6]
       || '. ' || repeat('Customers ask about shipping, returns and warranty. ', 1 + d % 4) AS body
FROM generate_series(1, 300) AS d$gen$
{%- endmacro %}

{#- A hashing-trick text embedding: tokens hashed into `dims` signed buckets, L2-normalised.
    Real, deterministic and offline; swap in a model-backed embedding in production. -#}
{% macro create_hash_embed(schema) -%}
$fn$CREATE EXTENSION IF NOT EXISTS vector;
CREATE OR REPLACE FUNCTION {{ schema }}.hash_embed(doc text, dims integer DEFAULT 64)
RETURNS vector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $body$
  WITH tokens AS (
    SELECT t FROM regexp_split_to_table(lower(doc), '[^a-z0-9]+') AS t WHERE t <> ''
  ), buckets AS (
    SELECT abs(hashtext(t)) % dims AS i, CASE WHEN hashtext('sign:' || t) % 2 = 0 THEN 1.0 ELSE -1.0 END AS s
    FROM tokens
  ), dense AS (
    SELECT g AS i, coalesce(sum(b.s), 0) AS v
    FROM generate_series(0, dims - 1) AS g LEFT JOIN buckets AS b ON b.i = g
    GROUP BY g
  ), norm AS (SELECT greatest(sqrt(sum(v * v)), 1e-9) AS n FROM dense)
  SELECT array_agg((v / n)::real ORDER BY i)::vector FROM dense, norm
$body$$fn$
{%- endmacro %}
