-- Analytic gradients of base, adaptors and mixture logits against central
-- finite differences (in float32, so agreement is to about 1e-3).
CREATE EXTENSION IF NOT EXISTS floral;

SELECT floral_create_model('gc_relu', '{3,5,4}', 'classification', 3, 2, '{"activation": "relu"}');
SELECT floral_create_model('gc_tanh', '{3,6,5,4}', 'classification', 2, 0.5, '{"activation": "tanh", "alpha": 2}');
SELECT floral_create_model('gc_reg', '{3,6,2}', 'regression', 3, 2, '{"activation": "tanh"}');
SELECT floral_create_model('gc_lin', '{4,3}', 'regression', 2, 1, '{"activation": "identity", "min_prob": 0}');
SELECT floral_create_model('gc_fedavg', '{3,5,2}', 'classification', 0);

CREATE TABLE gc_cases (model text, labels real[], logits real[]);
INSERT INTO gc_cases VALUES
	('gc_relu', '{0,3,1}', '{0.3,-0.2,0.5}'),
	('gc_tanh', '{2,0,3}', '{1.0,-1.0}'),
	('gc_reg', '{0.5,-1,2,0.1,-0.3,0.7}', '{0.1,0.2,-0.4}'),
	('gc_lin', '{1,2,3,-1,0,0.5,0.2,0.2,0.2}', '{0.7,-0.7}'),
	('gc_fedavg', '{1,0,1}', '{}');

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
DROP TABLE gc_cases;
SELECT floral_drop_model(name) FROM floral.models ORDER BY name;
