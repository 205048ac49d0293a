-- bench/pgbench/aggregate.sql: merge model m's current round.  "No
-- contributions" (SQLSTATE 55000) is normal when another client has just
-- aggregated; it is counted in bench_aggregate_log (ok = false).  Any other
-- error is caught and recorded in bench_errors (which must stay empty)
-- instead of aborting the pgbench client.
DO $$
DECLARE
	r int;
BEGIN
	r := floral_aggregate('m');
	INSERT INTO bench_aggregate_log (new_round, ok) VALUES (r, true);
EXCEPTION
	WHEN object_not_in_prerequisite_state THEN
		INSERT INTO bench_aggregate_log (new_round, ok) VALUES (NULL, false);
	WHEN OTHERS THEN
		INSERT INTO bench_errors (script, sqlstate, message) VALUES ('aggregate', SQLSTATE, SQLERRM);
END $$;
