-- floral's settings: floral.blas_threads is for superusers only (each BLAS
-- thread is a core taken from the whole server); floral.cache_memory is for
-- everyone and takes memory units.
CREATE EXTENSION IF NOT EXISTS floral;
CREATE ROLE regress_settings_user;
GRANT floral_reader TO regress_settings_user;
SELECT floral_create_model('settings', '{3,4,2}', 'classification', 2, 1);

SET ROLE regress_settings_user;
SET floral.blas_threads = 2;
\echo :LAST_ERROR_SQLSTATE
SHOW floral.blas_threads;
SET floral.cache_memory = '2MB';
SHOW floral.cache_memory;
SET floral.cache_memory = '1GB';
SHOW floral.cache_memory;
SET floral.cache_memory = 4096;
SHOW floral.cache_memory;
-- below the minimum of 1MB (the message names the maximum, which depends on
-- the platform: show the SQLSTATE only)
\set VERBOSITY sqlstate
SET floral.cache_memory = '512kB';
\set VERBOSITY default
SHOW floral.cache_memory;
SELECT floral_predict('settings', 'a', '{1,2,3}') IN (0, 1) AS predicts;
RESET floral.cache_memory;
SHOW floral.cache_memory;
RESET ROLE;

SET floral.blas_threads = 2;
SHOW floral.blas_threads;
-- a prediction (and so the thread count applied before it) still works
SELECT floral_predict('settings', 'a', '{1,2,3}') IN (0, 1) AS predicts;
RESET floral.blas_threads;
SHOW floral.blas_threads;

SELECT floral_drop_model('settings');
DROP ROLE regress_settings_user;
