# METADATA
# title: SQL arguments
# description: >-
#   SQL tools may run one read-only statement, and only against a database the database
#   catalog lists as a replica. Evaluated by tollgate.tools for permitted calls.
package tollgate.arguments.sql

import data.tollgate.lib.sql
import data.tollgate.rules.tools

_spec := tools.entry.arguments

_statement := tools.call_arguments[_spec.statement_argument]

# The target is an argument, or fixed by the catalog for tools bound to one database.
_database := tools.call_arguments[_spec.database_argument] if _spec.database_argument

_database := _spec.database if not _spec.database_argument

_statement_is_text if is_string(_statement)

_on_replica if data.catalog.databases[_database].role == "replica"

# METADATA
# title: deny
# description: Statements that are not a single read-only statement, and targets that are not replicas.
deny contains {"code": "invalid_tool_arguments", "message": message} if {
	not _statement_is_text
	message := sprintf("tool %q: argument %q must hold the SQL statement as a string", [
		tools.tool_id, object.get(_spec, "statement_argument", ""),
	])
}

deny contains {"code": "sql_write_statement", "message": message} if {
	_statement_is_text
	problems := sql.violations(_statement)
	count(problems) > 0
	message := sprintf("only a single read-only statement (SELECT, WITH ... SELECT, EXPLAIN) may run: %s", [
		concat("; ", sort(problems)),
	])
}

deny contains {"code": "sql_not_replica", "message": _not_replica_message} if not _on_replica

# A default keeps the deny standing even if a malformed catalog entry defeats the specific messages.
default _not_replica_message := "the target database is not a replica; agents may query replicas only"

_not_replica_message := sprintf("tool %q names no target database", [tools.tool_id]) if not _database

_not_replica_message := sprintf("database %v is not in the database catalog; agents may query replicas only", [
	database,
]) if {
	database := _database
	not data.catalog.databases[database]
}

_not_replica_message := sprintf("database %v is not a replica (role %v); agents may query replicas only", [
	database, role,
]) if {
	database := _database
	role := data.catalog.databases[database].role
	role != "replica"
}
