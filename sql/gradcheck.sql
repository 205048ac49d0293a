-- Analytic gradients of base, adaptors and mixture logits against central
-- finite differences (in float32, so agreement is to about 1e-3).
CREATE EXTENSION IF NOT EXISTS floral;

SELECT floral_create_model('gc_relu', '{3,5,4}', 'classification', 3, 2, '{"activation": "relu"}');
SELECT floral_create_model('gc_tanh', '{3,6,5,4}', 'classification', 2, 0.5, '{"activation": "tanh", "alpha": 2}');
SELECT floral_create_model('gc_reg', '{3,6,2}', 'regression', 3, 2, '{"activation": "tanh"}');
SELECT floral_create_model('gc_lin', '{4,3}', 'regression', 2, 1, '{"activation": "identity", "min_prob": 0}');
SELECT floral_create_model('gc_fedavg', '{3,5,2}', 'classification', 0);
-- Ensemble: three full models mixed at the output (members in place of adaptors)
SELECT floral_create_model('gc_ens', '{3,5,4}', 'classification', 3, 1, '{"ensemble": true}');
SELECT floral_create_model('gc_ens_reg', '{3,6,2}', 'regression', 2, 1, '{"ensemble": true, "activation": "tanh"}');

CREATE TABLE gc_cases (model text, labels real[], logits real[]);
INSERT INTO gc_cases VALUES
	('gc_relu', '{0,3,1}', '{0.3,-0.2,0.5}'),
	('gc_tanh', '{2,0,3}', '{1.0,-1.0}'),
	('gc_reg', '{0.5,-1,2,0.1,-0.3,0.7}', '{0.1,0.2,-0.4}'),
	('gc_lin', '{1,2,3,-1,0,0.5,0.2,0.2,0.2}', '{0.7,-0.7}'),
	('gc_fedavg', '{1,0,1}', '{}'),
	('gc_ens', '{0,3,1}', '{0.3,-0.2,0.5}'),
	('gc_ens_reg', '{0.5,-1,2,0.1,-0.3,0.7}', '{0.4,-0.4}');

SELECT c.model, g.part, g.parameters, g.analytic_norm > 1e-3 AS nonzero,
       g.relative_error < 5e-3 AS gradient_ok
FROM gc_cases c,
     LATERAL floral._gradient_check(c.model,
		CASE WHEN c.model = 'gc_lin'
			 THEN '{{0.1,0.2,0.3,0.4},{-0.5,0.4,1.0,0.2},{0.9,-0.3,0.2,-0.6}}'::real[]
			 ELSE '{{0.1,0.2,0.3},{-0.5,0.4,1.0},{0.9,-0.3,0.2}}'::real[] END,
		c.labels, c.logits, 42, 1e-3) g
ORDER BY c.model, g.part;

-- the check can fail: with a far too large step the two sides disagree
SELECT g.part, g.relative_error < 5e-3 AS gradient_ok
FROM floral._gradient_check('gc_relu', '{{0.1,0.2,0.3},{-0.5,0.4,1.0},{0.9,-0.3,0.2}}',
                            '{0,3,1}', '{0.3,-0.2,0.5}', 42, 10) g
ORDER BY g.part;

-- The fused SGD step (update inside the gradient GEMMs, preconditioning by
-- the inverse Gram matrices) against backward + precondition + axpy, from
-- the same random parameters: they must agree to float rounding, relative
-- to the size of the step.  Cases: no adaptors, ranks > 1 next to rank 1,
-- preconditioning on and off, relu, tanh and identity, both losses, an
-- Ensemble, and the benchmark's shape (784-200-10, 4 adaptors of ranks 15 and 1, batch 32).
CREATE FUNCTION sc_features(b int, n int) RETURNS real[] LANGUAGE sql AS $$
	SELECT array_agg(r ORDER BY i)
	FROM (SELECT i, array_agg(sin(i * n + j)::real ORDER BY j) AS r
		  FROM generate_series(1, b) i, generate_series(1, n) j GROUP BY i) s
$$;
SELECT floral_create_model('sc_fedavg', '{6,5,3}', 'classification', 0);
SELECT floral_create_model('sc_relu', '{20,12,3}', 'classification', 4, 0.5, '{"activation": "relu"}');
SELECT floral_create_model('sc_relu_plain', '{20,12,3}', 'classification', 4, 0.5,
						   '{"activation": "relu", "precondition": false}');
SELECT floral_create_model('sc_tanh', '{10,8,6,4}', 'regression', 4, 0.5, '{"activation": "tanh", "alpha": 2}');
SELECT floral_create_model('sc_tanh_plain', '{10,8,6,4}', 'classification', 4, 3,
						   '{"activation": "tanh", "precondition": false}');
SELECT floral_create_model('sc_lin', '{5,4}', 'regression', 2, 2, '{"activation": "identity", "min_prob": 0}');
SELECT floral_create_model('sc_bench', '{784,200,10}', 'classification', 4, 0.1);
SELECT floral_create_model('sc_ens', '{10,8,6,4}', 'classification', 3, 1, '{"ensemble": true, "activation": "tanh"}');
SELECT name, layers, adaptors, ranks, options->'precondition' AS precondition
FROM floral.models WHERE name LIKE 'sc\_%' ORDER BY name;

CREATE TABLE sc_cases (model text, batch int, labels real[], logits real[], lr real);
INSERT INTO sc_cases VALUES
	('sc_fedavg', 5, '{0,1,2,2,1}', '{}', 0.1),
	('sc_relu', 8, '{0,1,2,0,1,2,0,1}', '{0.3,-0.2,0.5,0.1}', 0.1),
	('sc_relu_plain', 8, '{2,1,0,0,1,2,2,1}', '{0.3,-0.2,0.5,0.1}', 0.5),
	('sc_tanh', 3, '{0.5,-1,2,0.1,-0.3,0.7,1,1,0,0,-2,0.2}', '{1,0,-1,0.5}', 0.1),
	('sc_tanh_plain', 6, '{3,0,1,2,3,0}', '{0,0,0,0}', 0.1),
	('sc_lin', 4, '{1,2,3,-1,0,0.5,0.2,0.2,0.2,1,1,1,0,0,0,-1}', '{0.7,-0.7}', 0.1),
	('sc_ens', 6, '{3,0,1,2,3,0}', '{0.2,-0.1,0.4}', 0.1),
	('sc_bench', 32, (SELECT array_agg((i % 10)::real) FROM generate_series(1, 32) i),
	 '{0.3,-0.2,0.5,0.1}', 0.1);
SELECT c.model, s.part, s.parameters, s.step_norm > 0 AS moved,
	   s.relative_difference < 1e-4 AS step_ok
FROM sc_cases c JOIN floral.models m ON m.name = c.model,
	 LATERAL floral._step_check(c.model, sc_features(c.batch, m.layers[1]),
								c.labels, c.logits, 7, c.lr) s
ORDER BY c.model, s.part;
DROP TABLE sc_cases;
DROP FUNCTION sc_features(int, int);
DROP TABLE gc_cases;
SELECT floral_drop_model(name) FROM floral.models ORDER BY name;
