-- Creating, inspecting and dropping models.
CREATE EXTENSION IF NOT EXISTS floral;

-- ranks: below 1 a budget fraction, else an absolute rank (FLORAL.md)
SELECT floral._rank(0.01, 784, 200) AS r1, floral._rank(0.01, 200, 10) AS r2,
       floral._rank(0.1, 784, 200) AS r3, floral._rank(4, 784, 200) AS r4,
       floral._rank(2.6, 10, 10) AS r5;

SELECT floral_create_model('fm', '{784,200,10}');
SELECT name, task, layers, adaptors, ranks, round, base_parameters,
       adaptor_parameters, tenants, rounds_kept, options
FROM floral.model_summary;
SELECT * FROM floral_layers('fm') WHERE layer = 2;

-- initial parameters: base uniform in +-1/sqrt(in), U in +-sqrt(6/in), V = beta = 0
SELECT floral.tensor_shape(floral_parameter('fm', 'W', 1)) AS w1_shape,
       (SELECT max(abs(v)) <= 1 / sqrt(784) FROM unnest(floral_parameter('fm', 'W', 1)::real[]) v) AS w1_bounded,
       (SELECT max(abs(v)) > 0.9 / sqrt(784) FROM unnest(floral_parameter('fm', 'W', 1)::real[]) v) AS w1_fills_range,
       (SELECT max(abs(v)) <= sqrt(6.0 / 784) FROM unnest(floral_parameter('fm', 'U', 1, 3)::real[]) v) AS u_bounded,
       floral.tensor_norm(floral_parameter('fm', 'V', 1, 2)) AS v_norm,
       floral.tensor_norm(floral_parameter('fm', 'beta', 2, 4)) AS beta_norm;

-- the same seed gives bit-identical models; another seed does not
SELECT floral_create_model('a', '{5,7,3}', 'classification', 3, 2, '{"seed": 11}');
SELECT floral_create_model('b', '{5,7,3}', 'classification', 3, 2, '{"seed": 11}');
SELECT floral_create_model('c', '{5,7,3}', 'classification', 3, 2, '{"seed": 12}');
SELECT (SELECT params::text FROM floral.rounds WHERE model = 'a') =
       (SELECT params::text FROM floral.rounds WHERE model = 'b') AS same_seed_same_model,
       (SELECT params::text FROM floral.rounds WHERE model = 'a') =
       (SELECT params::text FROM floral.rounds WHERE model = 'c') AS other_seed_same_model;

-- FedAvg (no adaptors), regression, options
SELECT floral_create_model('plain', '{3,1}', 'regression', 0);
SELECT floral_create_model('local', '{3,4,2}', 'classification', 1, 1,
                           '{"private_adaptors": true, "activation": "tanh"}');
SELECT name, adaptors, ranks, base_parameters, adaptor_parameters,
       options->>'activation' AS activation, options->>'private_adaptors' AS private
FROM floral.model_summary WHERE name IN ('plain', 'local') ORDER BY name;

-- mixtures of unknown tenants are uniform; FedAvg has none
SELECT floral_mixture('a', 'nobody') AS uniform, floral_mixture('plain', 'nobody') AS fedavg;
-- a NULL tenant is an unknown one; a NULL model is no model
SELECT floral_mixture('a', NULL) AS null_tenant;
SELECT try($$SELECT floral_mixture(NULL, 'nobody')$$) AS null_model;

-- dropping removes everything of the model
SELECT floral_drop_model('fm');
SELECT count(*) AS rounds_left FROM floral.rounds WHERE model = 'fm';
SELECT name FROM floral.models ORDER BY name;
SELECT floral_drop_model(name) FROM floral.models;
