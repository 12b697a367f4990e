package tollgate.lib.sql_test

import data.tollgate.lib.sql

test_select_is_read_only if {
	sql.violations("SELECT id, total FROM orders WHERE created_at > now() - interval '1 day'") == set()
}

test_trailing_semicolon_and_whitespace_allowed if {
	sql.violations("  select 1 ;  \n") == set()
}

test_with_select_is_read_only if {
	sql.violations("WITH recent AS (SELECT * FROM orders) SELECT count(*) FROM recent") == set()
}

test_explain_is_read_only if {
	sql.violations("EXPLAIN ANALYZE SELECT * FROM orders") == set()
}

test_parenthesised_union_is_read_only if {
	sql.violations("(SELECT 1) UNION (SELECT 2)") == set()
}

test_words_containing_keywords_are_fine if {
	sql.violations("SELECT created_at, updated_by, deleted, replace(name, 'a', 'b') FROM t") == set()
}

test_each_write_statement_is_refused_by_keyword if {
	every statement in [
		"INSERT INTO t VALUES (1)",
		"UPDATE t SET a = 1",
		"DELETE FROM t",
		"DROP TABLE t",
		"ALTER TABLE t ADD COLUMN b int",
		"TRUNCATE t",
		"GRANT ALL ON t TO bob",
		"CREATE TABLE t (a int)",
		"COPY t TO '/tmp/t.csv'",
	] {
		keyword := split(statement, " ")[0]
		sprintf("statement uses %s", [keyword]) in sql.violations(statement)
		"statement must start with SELECT, WITH or EXPLAIN" in sql.violations(statement)
	}
}

test_other_statements_are_refused_by_their_start if {
	every statement in ["VACUUM t", "SET ROLE admin", "BEGIN", "SHOW ALL", "CALL p()"] {
		"statement must start with SELECT, WITH or EXPLAIN" in sql.violations(statement)
	}
}

test_lower_and_mixed_case_writes_are_refused if {
	"statement uses DELETE" in sql.violations("dElEtE from t")
	"statement uses DROP" in sql.violations("Drop table t")
}

test_writes_hidden_in_cte_are_refused if {
	"statement uses DELETE" in sql.violations("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d")
}

test_explain_analyze_of_write_is_refused if {
	"statement uses UPDATE" in sql.violations("explain analyze update t set a = 1")
}

test_select_into_is_refused if {
	"statement uses INTO" in sql.violations("SELECT * INTO backup FROM t")
}

test_select_for_update_is_refused if {
	"statement uses UPDATE" in sql.violations("SELECT * FROM t FOR UPDATE")
}

test_side_effect_functions_are_refused if {
	"statement uses PG_TERMINATE_BACKEND" in sql.violations("SELECT pg_terminate_backend(42)")
	"statement uses LO_IMPORT" in sql.violations("select lo_import('/etc/passwd')")
}

test_second_statement_is_refused if {
	"statement contains more than one statement (;)" in sql.violations("SELECT 1; DROP TABLE t")
	"statement contains more than one statement (;)" in sql.violations("SELECT 1;SELECT 2;")
}

test_line_comment_hiding_a_write_is_refused if {
	v := sql.violations("SELECT 1 --\n; DELETE FROM t")
	"statement contains a comment (--, /*, */ or #)" in v
	"statement uses DELETE" in v
}

test_block_comment_is_refused if {
	"statement contains a comment (--, /*, */ or #)" in sql.violations("SELECT /* harmless? */ 1")
}

test_mysql_executable_comment_is_refused if {
	"statement contains a comment (--, /*, */ or #)" in sql.violations("SELECT 1 /*! ; DROP TABLE t */")
}

test_comment_before_write_keyword_start_is_refused if {
	v := sql.violations("/* SELECT */ DELETE FROM t")
	"statement must start with SELECT, WITH or EXPLAIN" in v
	"statement uses DELETE" in v
}

test_keyword_glued_to_select_is_refused if {
	"statement must start with SELECT, WITH or EXPLAIN" in sql.violations("selectx FROM t")
}

test_write_keyword_in_literal_errs_towards_refusal if {
	"statement uses DELETE" in sql.violations("SELECT * FROM audit WHERE action = 'delete'")
}

test_empty_statement_is_refused if {
	"statement is empty" in sql.violations("   ")
}

test_non_string_statement_is_refused if {
	sql.violations(["SELECT 1"]) == {"statement is not a string"}
}

test_overlong_statement_is_refused if {
	long := concat("", ["SELECT '", concat("", [s | some _ in numbers.range(1, 70000); s := "a"]), "'"])
	sql.violations(long) == {"statement is longer than 65536 characters"}
}
