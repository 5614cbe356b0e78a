from dbt_durable.cli import main

main()
