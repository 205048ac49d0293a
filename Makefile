# floral: PGXS build.  Dense math goes through OpenBLAS's CBLAS interface.
EXTENSION = floral floral_federation
MODULE_big = floral
DATA = floral--1.0.sql floral_federation--1.0.sql
PGFILEDESC = "floral - federated low-rank adaptive learning"

OBJS = \
	floral.o \
	src/tensor.o \
	src/model.o \
	src/rng.o \
	src/nn.o \
	src/source.o \
	src/catalog.o \
	src/train.o \
	src/aggregate.o \
	src/predict.o \
	src/predict_batch.o \
	src/cache.o \
	src/parameters.o \
	src/gradcheck.o \
	src/progress.o \
	src/sums.o \
	src/contributions.o \
	src/parallel.o \
	src/ensemble.o \
	src/router.o \
	src/secagg.o \
	src/privacy.o

# -O3: lets GCC vectorise the element-wise loops around the BLAS calls
PG_CFLAGS = -O3
PG_CPPFLAGS = -I$(srcdir)/src $(shell pkg-config --cflags openblas 2>/dev/null)
# libcrypto (OpenSSL, which PostgreSQL links too): secure aggregation's primitives
SHLIB_LINK = $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas) -lcrypto

# setup (first) creates helper functions that later tests call
REGRESS = setup tensor model train aggregate predict predict_batch errors gradcheck synthetic baselines cancel privileges privacy accountant secagg readonly settings
REGRESS_OPTS = --temp-config=$(srcdir)/sql/regress.conf

TAP_TESTS = 1

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
# No LLVM bitcode: JIT inlining of floral's functions gains nothing (the work
# is in BLAS), and it would make clang a build dependency.
override with_llvm = no

include $(PGXS)

# PGXS tracks no header dependencies unless PostgreSQL was configured with
# --enable-depend; every object depends on every header here (few and small).
$(OBJS): $(wildcard $(srcdir)/src/*.h)
