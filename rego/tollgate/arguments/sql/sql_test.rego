package tollgate.arguments.sql_test

import data.tollgate.fixtures_test as fx
import data.tollgate.rules.tools

_query(statement, database) := fx.tool("data-analyst", "postgres", "query", {"sql": statement, "database": database})

test_select_on_replica_allowed if {
	count(tools.deny) == 0 with input as _query("SELECT count(*) FROM orders", "analytics-replica")
}

test_replica_by_host_name_allowed if {
	count(tools.deny) == 0 with input as _query("select 1", "analytics-replica.db.internal")
}

test_write_statement_denied if {
	deny := tools.deny with input as _query("DELETE FROM orders", "analytics-replica")
	fx.codes(deny) == {"sql_write_statement"}
	some reason in deny
	contains(reason.message, "statement uses DELETE")
}

test_mixed_case_write_denied if {
	request := _query("UpDaTe orders SeT total = 0", "analytics-replica")
	fx.codes(tools.deny) == {"sql_write_statement"} with input as request
}

test_stacked_statement_denied if {
	request := _query("SELECT 1; DROP TABLE orders", "analytics-replica")
	fx.codes(tools.deny) == {"sql_write_statement"} with input as request
}

test_comment_hiding_write_denied if {
	request := _query("SELECT 1 /*\n*/ ; insert into t values (1)", "analytics-replica")
	fx.codes(tools.deny) == {"sql_write_statement"} with input as request
	fx.codes(tools.deny) == {"sql_write_statement"} with input as _query("SELECT 1 -- harmless", "analytics-replica")
}

test_primary_denied if {
	deny := tools.deny with input as _query("SELECT 1", "analytics-primary")
	deny == {{
		"code": "sql_not_replica",
		"message": "database analytics-primary is not a replica (role primary); agents may query replicas only",
	}}
}

test_uncatalogued_database_denied if {
	deny := tools.deny with input as _query("SELECT 1", "prod-main")
	fx.codes(deny) == {"sql_not_replica"}
	some reason in deny
	contains(reason.message, "not in the database catalog")
}

test_missing_database_denied if {
	deny := tools.deny with input as fx.tool("data-analyst", "postgres", "query", {"sql": "SELECT 1"})
	deny == {{"code": "sql_not_replica", "message": "tool \"postgres/query\" names no target database"}}
}

test_write_on_primary_collects_both_reasons if {
	request := _query("DROP TABLE orders", "billing-primary")
	fx.codes(tools.deny) == {"sql_write_statement", "sql_not_replica"} with input as request
}

test_tool_bound_to_replica_needs_no_database_argument if {
	r := fx.tool("data-analyst", "warehouse", "run_query", {"query": "WITH x AS (SELECT 1) SELECT * FROM x"})
	count(tools.deny) == 0 with input as r
}

test_tool_bound_to_primary_denied if {
	r := fx.tool("data-analyst", "warehouse", "run_query", {"query": "SELECT 1"})
	fx.codes(tools.deny) == {"sql_not_replica"} with input as r
		with data.catalog.tools["warehouse/run_query"].arguments.database as "analytics-primary"
}

test_malformed_database_entry_still_denied if {
	r := _query("SELECT 1", "broken")
	fx.codes(tools.deny) == {"sql_not_replica"} with input as r
		with data.catalog.databases.broken as null
}

test_missing_statement_is_invalid if {
	r := fx.tool("data-analyst", "postgres", "query", {"database": "analytics-replica"})
	fx.codes(tools.deny) == {"invalid_tool_arguments"} with input as r
}
