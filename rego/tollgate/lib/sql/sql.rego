# METADATA
# title: Read-only SQL
# description: >-
#   A lexical check that a SQL text is one read-only statement. It does not parse SQL: it
#   accepts only texts that start with SELECT, WITH or EXPLAIN, hold no comment and no second
#   statement, and use none of the words that write, lock or reach outside the database. It
#   errs towards refusing: a write keyword inside a string literal or a quoted identifier is
#   refused too. Replicas are the second line of defence.
package tollgate.lib.sql

# Longer texts are refused outright, which bounds the tokenising work per request.
max_statement_chars := 65536

# Words that write data or schema, take locks, run procedures or call functions with side
# effects. Statement-level commands (VACUUM, SET, BEGIN, ...) need not be listed: they can
# only start a statement, and only SELECT/WITH/EXPLAIN may start one.
_forbidden_words := [
	"insert", "update", "delete", "merge", "upsert", "truncate", "drop", "alter", "create",
	"grant", "revoke", "copy", "into", "lock", "call", "exec", "execute",
	"nextval", "setval", "set_config", "pg_sleep", "pg_terminate_backend", "pg_cancel_backend",
	"pg_reload_conf", "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file",
	"lo_import", "lo_export", "lo_unlink", "dblink", "dblink_exec", "load_file",
	"xp_cmdshell", "openrowset", "opendatasource",
]

# One pass of RE2 over the text instead of a Rego loop over every token. A regex word
# boundary is looser than SQL's ("$" and non-ASCII letters end a regex word but not a SQL
# identifier), so this flags every keyword SQL would see, and a few it would not.
_forbidden_pattern := concat("", [`\b(`, concat("|", _forbidden_words), `)\b`])

# METADATA
# title: violations
# description: >-
#   Why statement is not a single read-only statement, as a set of messages. Empty when it is.
violations(statement) := {"statement is not a string"} if not is_string(statement)

violations(statement) := _text_violations(statement) if is_string(statement)

_text_violations(statement) := {sprintf("statement is longer than %d characters", [max_statement_chars])} if {
	count(statement) > max_statement_chars
}

_text_violations(statement) := problems if {
	count(statement) <= max_statement_chars
	lowered := lower(statement)
	problems := ((_empty(lowered) | _comments(lowered)) | (_multiple(lowered) | _start(lowered))) | _words(lowered)
}

_empty(text) := {"statement is empty" | trim_space(text) == ""}

# Comments can hide anything from a lexical check ("--", "/* */", MySQL's "#" and "/*! */").
_comments(text) := {"statement contains a comment (--, /*, */ or #)" |
	some marker in {"--", "/*", "*/", "#"}
	contains(text, marker)
}

# One trailing ";" is harmless; any other ";" may start a second statement, even inside a
# literal as far as this check can tell.
_multiple(text) := {"statement contains more than one statement (;)" |
	contains(trim_right(text, "; \t\r\n"), ";")
}

_start(text) := {"statement must start with SELECT, WITH or EXPLAIN" |
	trim_space(text) != ""
	not regex.match(`^[\s(]*(select|with|explain)\b`, text)
}

_words(text) := {sprintf("statement uses %s", [upper(word)]) |
	some word in regex.find_n(_forbidden_pattern, text, -1)
}
