-- The floral.tensor type: text and binary forms, casts, validation.
CREATE EXTENSION floral;

SELECT '[1, 2.5, -3]'::floral.tensor AS vector,
       '[[1,2,3],[4,5,6]]'::floral.tensor AS matrix,
       floral.tensor_shape('[[[1],[2]],[[3],[4]],[[5],[6]]]') AS shape3,
       floral.tensor_norm('[3,4]') AS norm;

-- output is exact: shortest decimal that reads back to the same float
SELECT t::text::floral.tensor::text = t::text AS round_trip
FROM (SELECT '[0.1, 1e-30, 3.4028235e38, -7.006492e-45]'::floral.tensor AS t) s;

-- casts keep the shape
SELECT ARRAY[[1,2],[3,4]]::real[]::floral.tensor AS from_array,
       '[[1,2],[3,4]]'::floral.tensor::real[] AS to_array;

-- binary form round-trips through COPY
CREATE TEMP TABLE tt (id int, t floral.tensor);
INSERT INTO tt VALUES (1, '[[1.5,2],[3,-4]]'), (2, '[7]');
COPY tt TO '/tmp/floral_regress_tensor.bin' (FORMAT binary);
CREATE TEMP TABLE tt2 (LIKE tt);
COPY tt2 FROM '/tmp/floral_regress_tensor.bin' (FORMAT binary);
SELECT id, t, floral.tensor_shape(t) FROM tt2 ORDER BY id;
SELECT encode(floral.tensor_send('[[1,2]]'), 'hex') AS send;

-- malformed literals are errors, never crashes
CREATE FUNCTION pg_temp.try_tensor(lit text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	RETURN lit::floral.tensor::text;
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

SELECT lit, pg_temp.try_tensor(lit) AS result
FROM unnest(ARRAY[
	'', '[', ']', '[]', '[[]]', '[1,2', '[1,,2]', '[1 2]', '[a]', '1,2',
	'[[1,2],[3]]', '[[1,2],3]', '[1,[2,3]]', '[1,2] x', '[NaN]', '[inf]',
	'[-Infinity]', '[1e39]', '[[[[[[[[[1]]]]]]]]]', '[[[[[[[[1]]]]]]]]'
]) AS lit;

-- arrays with NULLs or non-finite values are refused
SELECT pg_temp.try_tensor(NULL);
DO $$ BEGIN PERFORM ARRAY[1,NULL]::real[]::floral.tensor;
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM ARRAY['NaN']::real[]::floral.tensor;
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
DO $$ BEGIN PERFORM '{}'::real[]::floral.tensor;
EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%: %', SQLSTATE, SQLERRM; END $$;
