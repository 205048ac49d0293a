-- bench/pgbench/train.sql: train one random tenant of model m and log what
-- floral_train returned, with the round it trained in.  Needs -D tenants=N.
--
-- The round is read by a statement after the training call, in the same
-- transaction: the call holds the model's shared advisory lock until the
-- transaction ends, so no aggregation can have moved the round since the
-- call read it, and the later statement's fresh snapshot sees any
-- aggregation that committed before.
--
-- A tenant contributes once per round: a call for a tenant whose earlier
-- call of the round is still pending returns no row (it is skipped); that is
-- logged in bench_skip_log, with the round.
--
-- An error is caught and recorded in bench_errors (which must stay empty)
-- instead of aborting the pgbench client, so that one failure does not end
-- the run; the subtransaction rolls back everything the failed call wrote.
\set t random(0, :tenants - 1)
DO $$
DECLARE
	r int;
	n bigint;
BEGIN
	INSERT INTO bench_train_log (xid, tenant, examples, loss)
		SELECT txid_current(), f.tenant, f.examples, f.loss
		FROM floral_train('m', 'SELECT tenant, features, label FROM rows WHERE tenant = ''t:t'' ORDER BY id',
						  '{"epochs": 1, "batch_size": 32, "lr": 0.05}') f;
	GET DIAGNOSTICS n = ROW_COUNT;
	SELECT m.round INTO r FROM floral.models m WHERE m.name = 'm';
	IF n = 0 THEN
		INSERT INTO bench_skip_log (round, tenant) VALUES (r, 't:t');
	END IF;
	UPDATE bench_train_log SET round = r WHERE xid = txid_current() AND round IS NULL;
EXCEPTION WHEN OTHERS THEN
	INSERT INTO bench_errors (script, sqlstate, message) VALUES ('train', SQLSTATE, SQLERRM);
END $$;
