-- The paper's synthetic linear task: tenants in two groups whose true linear
-- maps differ by a rank-1 term.  FLoRAL must fit it several times better
-- than FedAvg, and each group's tenants must choose their own adaptor.
CREATE EXTENSION IF NOT EXISTS floral;
SET max_parallel_workers_per_gather = 0;

-- y = (A + s * 2 u v^T) x + noise, s = +1 for even tenants, -1 for odd ones
-- (make_lowrank_task: see setup.sql), tenants 1 .. 9
SELECT make_lowrank_task('syn', 0.42, 9);

-- tenants 1..8 train (rows 1..100), tenant9 is a newcomer; rows 101..150 are the test set
SELECT floral_create_model('syn_floral', '{8,4}', 'regression', 2, 1, '{"seed": 3}');
SELECT floral_create_model('syn_fedavg', '{8,4}', 'regression', 0, 1, '{"seed": 3}');
DO $$
BEGIN
	FOR k IN 1 .. 100 LOOP
		PERFORM floral_train('syn_floral', 'SELECT tenant, features, label FROM syn WHERE r <= 100 AND tenant <> ''tenant9''',
							 '{"lr": 0.1, "batch_size": 16}');
		PERFORM floral_aggregate('syn_floral');
		PERFORM floral_train('syn_fedavg', 'SELECT tenant, features, label FROM syn WHERE r <= 100 AND tenant <> ''tenant9''',
							 '{"lr": 0.1, "batch_size": 16}');
		PERFORM floral_aggregate('syn_fedavg');
	END LOOP;
END $$;

CREATE TABLE syn_mse AS
SELECT (SELECT sum(loss * examples) / sum(examples) FROM floral_evaluate('syn_floral',
		'SELECT tenant, features, label FROM syn WHERE r > 100 AND tenant <> ''tenant9''')) AS floral,
	   (SELECT sum(loss * examples) / sum(examples) FROM floral_evaluate('syn_fedavg',
		'SELECT tenant, features, label FROM syn WHERE r > 100 AND tenant <> ''tenant9''')) AS fedavg;
SELECT floral * 5 < fedavg AS floral_five_times_better, fedavg > 0.5 AS fedavg_cannot_fit
FROM syn_mse;

-- each group's tenants lean to one adaptor, and the two groups to different ones
CREATE TABLE syn_choice AS
SELECT t.tenant, s.grp, (SELECT k FROM unnest(t.mixture) WITH ORDINALITY u(p, k) ORDER BY p DESC LIMIT 1) AS adaptor,
       (SELECT max(p) FROM unnest(t.mixture) p) AS weight
FROM floral.tenant_mixtures t JOIN (SELECT DISTINCT tenant, grp FROM syn) s USING (tenant)
WHERE t.model = 'syn_floral';
SELECT grp, count(*) AS tenants, count(DISTINCT adaptor) AS adaptors_chosen, min(weight) > 0.8 AS confident
FROM syn_choice GROUP BY grp ORDER BY grp;
SELECT count(DISTINCT adaptor) AS groups_use_different_adaptors FROM syn_choice;

-- cold start: tenant9 (an odd tenant) fits only its mixture on 20 rows and
-- then predicts much better than with the uniform mixture
SELECT floral_mixture('syn_floral', 'tenant9') AS before_personalize;
CREATE TABLE syn_cold_uniform AS
SELECT loss FROM floral_evaluate('syn_floral', 'SELECT tenant, features, label FROM syn WHERE r > 100 AND tenant = ''tenant9''');
SELECT tenant, examples FROM floral_personalize('syn_floral',
	'SELECT tenant, features, label FROM syn WHERE r <= 20 AND tenant = ''tenant9''', '{"epochs": 20, "router_lr": 0.5}');
SELECT (SELECT adaptor FROM syn_choice WHERE grp = 1 LIMIT 1) =
       (SELECT k FROM unnest(floral_mixture('syn_floral', 'tenant9')) WITH ORDINALITY u(p, k) ORDER BY p DESC LIMIT 1)
       AS picked_its_groups_adaptor,
       (SELECT loss FROM floral_evaluate('syn_floral', 'SELECT tenant, features, label FROM syn WHERE r > 100 AND tenant = ''tenant9'''))
       * 5 < (SELECT loss FROM syn_cold_uniform) AS five_times_better_than_uniform;
-- the one-hot search finds the same adaptor
SELECT tenant, examples, (SELECT k FROM unnest(mixture) WITH ORDINALITY u(p, k) ORDER BY p DESC LIMIT 1) =
       (SELECT adaptor FROM syn_choice WHERE grp = 1 LIMIT 1) AS same_adaptor
FROM floral_personalize('syn_floral',
	'SELECT tenant, features, label FROM syn WHERE r <= 20 AND tenant = ''tenant9''', '{"method": "one_hot"}');
-- shared parameters were not touched by personalisation
SELECT count(*) AS contributions FROM floral.contributions WHERE model = 'syn_floral';

DROP TABLE syn_a, syn_uv, syn_x, syn, syn_mse, syn_choice, syn_cold_uniform;
SELECT floral_drop_model(name) FROM floral.models ORDER BY name;
