/*
 * secagg.c
 *	  Secure aggregation: keys, masks, encrypted shares and unmasking, all
 *	  from OpenSSL's libcrypto (secagg.h says which primitive does what).
 *
 * The first half is plain C over OpenSSL: each helper returns NULL or a
 * message and frees what it allocated, so no error ever leaves an OpenSSL
 * object behind.  The second half are the SQL-callable functions the
 * federation's PL/pgSQL calls: they validate every argument (lengths, NULLs,
 * counts) and raise the helpers' messages as errors.
 *
 * What a branch sends is a vector of 64-bit words modulo 2^64:
 *
 *	  y_u = q(x_u) + PRG(b_u) + sum_{v != u} (u < v ? +1 : -1) PRG(s_uv)
 *
 * where q is the fixed point of secagg.h, b_u a fresh seed of the branch,
 * and s_uv = HKDF(X25519(s_u, S_v)) the seed branch u shares with v.  In the
 * sum over branches the pairwise terms cancel; the coordinator subtracts
 * PRG(b_u) of every branch that sent (from b_u recovered from t shares) and
 * the pairwise terms of every branch that did not (from its s_v, recovered
 * likewise).  The word layout of x is: examples, tenants, loss_sum, the C
 * weights M_c, then the parameter-shaped sums.
 */
#include "postgres.h"

#include <math.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "port/pg_bswap.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "catalog.h"
#include "floral.h"
#include "secagg.h"
#include "tensor.h"

PG_FUNCTION_INFO_V1(floral_secagg_keypair);
PG_FUNCTION_INFO_V1(floral_secagg_public);
PG_FUNCTION_INFO_V1(floral_secagg_seed);
PG_FUNCTION_INFO_V1(floral_secagg_make_shares);
PG_FUNCTION_INFO_V1(floral_secagg_open_share);
PG_FUNCTION_INFO_V1(floral_secagg_combine);
PG_FUNCTION_INFO_V1(floral_secagg_quantize);
PG_FUNCTION_INFO_V1(floral_secagg_mask);
PG_FUNCTION_INFO_V1(floral_secagg_unmask);

static const uint8_t hkdf_salt[] = "floral secure aggregation v1";

/* ---------------------------------------------------------------- helpers */

const char *
floral_crypto_random(uint8_t *out, size_t len)
{
	return RAND_priv_bytes(out, (int) len) == 1 ? NULL : "the random generator failed";
}

const char *
floral_crypto_keypair(uint8_t priv[SECAGG_KEY_LEN], uint8_t pub[SECAGG_KEY_LEN])
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, NULL);
	EVP_PKEY   *key = NULL;
	size_t		lp = SECAGG_KEY_LEN,
				lq = SECAGG_KEY_LEN;
	const char *err = NULL;

	if (ctx == NULL || EVP_PKEY_keygen_init(ctx) <= 0 || EVP_PKEY_keygen(ctx, &key) <= 0 ||
		EVP_PKEY_get_raw_private_key(key, priv, &lp) <= 0 ||
		EVP_PKEY_get_raw_public_key(key, pub, &lq) <= 0 ||
		lp != SECAGG_KEY_LEN || lq != SECAGG_KEY_LEN)
		err = "could not generate an X25519 key";
	EVP_PKEY_free(key);
	EVP_PKEY_CTX_free(ctx);
	return err;
}

const char *
floral_crypto_public(const uint8_t priv[SECAGG_KEY_LEN], uint8_t pub[SECAGG_KEY_LEN])
{
	EVP_PKEY   *key = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, SECAGG_KEY_LEN);
	size_t		l = SECAGG_KEY_LEN;
	const char *err = NULL;

	if (key == NULL || EVP_PKEY_get_raw_public_key(key, pub, &l) <= 0 || l != SECAGG_KEY_LEN)
		err = "not an X25519 private key";
	EVP_PKEY_free(key);
	return err;
}

static const char *
hkdf(const uint8_t *ikm, size_t ikm_len, const uint8_t *info, size_t info_len,
	 uint8_t out[SECAGG_KEY_LEN])
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	size_t		len = SECAGG_KEY_LEN;
	const char *err = NULL;

	if (ctx == NULL || EVP_PKEY_derive_init(ctx) <= 0 ||
		EVP_PKEY_CTX_set_hkdf_md(ctx, EVP_sha256()) <= 0 ||
		EVP_PKEY_CTX_set1_hkdf_salt(ctx, hkdf_salt, sizeof(hkdf_salt) - 1) <= 0 ||
		EVP_PKEY_CTX_set1_hkdf_key(ctx, ikm, (int) ikm_len) <= 0 ||
		EVP_PKEY_CTX_add1_hkdf_info(ctx, info, (int) info_len) <= 0 ||
		EVP_PKEY_derive(ctx, out, &len) <= 0 || len != SECAGG_KEY_LEN)
		err = "HKDF failed";
	EVP_PKEY_CTX_free(ctx);
	return err;
}

const char *
floral_crypto_expand(const uint8_t seed[SECAGG_KEY_LEN], const uint8_t *info, size_t info_len,
			  uint8_t out[SECAGG_KEY_LEN])
{
	return hkdf(seed, SECAGG_KEY_LEN, info, info_len, out);
}

const char *
floral_crypto_agree(const uint8_t priv[SECAGG_KEY_LEN], const uint8_t peer_pub[SECAGG_KEY_LEN],
			 const uint8_t *info, size_t info_len, uint8_t out[SECAGG_KEY_LEN])
{
	EVP_PKEY   *mine = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, SECAGG_KEY_LEN);
	EVP_PKEY   *peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer_pub, SECAGG_KEY_LEN);
	EVP_PKEY_CTX *ctx = mine ? EVP_PKEY_CTX_new(mine, NULL) : NULL;
	uint8_t		secret[SECAGG_KEY_LEN];
	size_t		len = sizeof(secret);
	const char *err = NULL;

	/* OpenSSL refuses a peer key of small order (an all-zero secret) here */
	if (mine == NULL || peer == NULL || ctx == NULL ||
		EVP_PKEY_derive_init(ctx) <= 0 || EVP_PKEY_derive_set_peer(ctx, peer) <= 0 ||
		EVP_PKEY_derive(ctx, secret, &len) <= 0 || len != sizeof(secret))
		err = "X25519 key agreement failed";
	else
		err = hkdf(secret, len, info, info_len, out);
	OPENSSL_cleanse(secret, sizeof(secret));
	EVP_PKEY_CTX_free(ctx);
	EVP_PKEY_free(mine);
	EVP_PKEY_free(peer);
	return err;
}

/* words of keystream made per call of the cipher */
#define PRG_BLOCK 4096

const char *
floral_crypto_add_prg(uint64_t *acc, size_t n, const uint8_t key[SECAGG_KEY_LEN], int sign)
{
	static const uint8_t zeros[PRG_BLOCK * 8];
	uint8_t		iv[16] = {0};	/* the key is used for this one stream only */
	uint8_t		buf[PRG_BLOCK * 8];	/* on the stack: no allocation that could fail */
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	const char *err = NULL;

	if (ctx == NULL || EVP_EncryptInit_ex(ctx, EVP_chacha20(), NULL, key, iv) != 1)
		err = "could not start ChaCha20";
	for (size_t off = 0; err == NULL && off < n; off += PRG_BLOCK)
	{
		size_t		k = Min((size_t) PRG_BLOCK, n - off);
		int			len;

		if (EVP_EncryptUpdate(ctx, buf, &len, zeros, (int) (k * 8)) != 1 || len != (int) (k * 8))
		{
			err = "ChaCha20 failed";
			break;
		}
		for (size_t i = 0; i < k; i++)
		{
			uint64_t	w = 0;

			/* little-endian by definition, the same on every machine */
			for (int b = 7; b >= 0; b--)
				w = (w << 8) | buf[i * 8 + b];
			if (sign > 0)
				acc[off + i] += w;
			else
				acc[off + i] -= w;
		}
	}
	EVP_CIPHER_CTX_free(ctx);
	OPENSSL_cleanse(buf, sizeof(buf));
	return err;
}

const char *
floral_crypto_seal(const uint8_t key[SECAGG_KEY_LEN], const uint8_t *aad, size_t aad_len,
			const uint8_t plain[SECAGG_PLAIN_LEN], uint8_t sealed[SECAGG_SEALED_LEN])
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	uint8_t    *nonce = sealed;
	uint8_t    *ct = sealed + SECAGG_NONCE_LEN;
	uint8_t    *tag = ct + SECAGG_PLAIN_LEN;
	int			len;
	const char *err = floral_crypto_random(nonce, SECAGG_NONCE_LEN);

	if (err == NULL &&
		(ctx == NULL ||
		 EVP_EncryptInit_ex(ctx, EVP_chacha20_poly1305(), NULL, NULL, NULL) != 1 ||
		 EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, SECAGG_NONCE_LEN, NULL) != 1 ||
		 EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) != 1 ||
		 EVP_EncryptUpdate(ctx, NULL, &len, aad, (int) aad_len) != 1 ||
		 EVP_EncryptUpdate(ctx, ct, &len, plain, SECAGG_PLAIN_LEN) != 1 || len != SECAGG_PLAIN_LEN ||
		 EVP_EncryptFinal_ex(ctx, ct + len, &len) != 1 ||
		 EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, SECAGG_TAG_LEN, tag) != 1))
		err = "ChaCha20-Poly1305 encryption failed";
	EVP_CIPHER_CTX_free(ctx);
	return err;
}

const char *
floral_crypto_open(const uint8_t key[SECAGG_KEY_LEN], const uint8_t *aad, size_t aad_len,
			const uint8_t sealed[SECAGG_SEALED_LEN], uint8_t plain[SECAGG_PLAIN_LEN])
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	const uint8_t *nonce = sealed;
	const uint8_t *ct = sealed + SECAGG_NONCE_LEN;
	uint8_t		tag[SECAGG_TAG_LEN];
	int			len;
	const char *err = NULL;

	memcpy(tag, ct + SECAGG_PLAIN_LEN, SECAGG_TAG_LEN);
	if (ctx == NULL ||
		EVP_DecryptInit_ex(ctx, EVP_chacha20_poly1305(), NULL, NULL, NULL) != 1 ||
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, SECAGG_NONCE_LEN, NULL) != 1 ||
		EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) != 1 ||
		EVP_DecryptUpdate(ctx, NULL, &len, aad, (int) aad_len) != 1 ||
		EVP_DecryptUpdate(ctx, plain, &len, ct, SECAGG_PLAIN_LEN) != 1 ||
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, SECAGG_TAG_LEN, tag) != 1 ||
		EVP_DecryptFinal_ex(ctx, plain + len, &len) != 1)
	{
		OPENSSL_cleanse(plain, SECAGG_PLAIN_LEN);
		err = "the share does not authenticate";
	}
	EVP_CIPHER_CTX_free(ctx);
	return err;
}

/* the field of the shares: GF(p), p = 2^521 - 1 (a Mersenne prime) */
static BIGNUM *
field_prime(void)
{
	BIGNUM	   *p = BN_new();

	if (p && BN_set_bit(p, 521) && BN_sub_word(p, 1))
		return p;
	BN_free(p);
	return NULL;
}

const char *
floral_crypto_split(const uint8_t secret[SECAGG_KEY_LEN], int n, int t, uint8_t *shares)
{
	BN_CTX	   *bn = BN_CTX_secure_new();
	BIGNUM	   *p = field_prime();
	BIGNUM	   *coef[SECAGG_MAX_PARTIES];
	BIGNUM	   *x = BN_new(),
			   *y = BN_secure_new();
	const char *err = NULL;
	int			made = 0;

	if (t < 1 || t > n || n > SECAGG_MAX_PARTIES)
		err = "threshold out of range";
	if (err == NULL && (bn == NULL || p == NULL || x == NULL || y == NULL))
		err = "out of memory in BIGNUM";
	/* f(X) = secret + a_1 X + ... + a_{t-1} X^{t-1}, a_i uniform in GF(p) */
	for (; err == NULL && made < t; made++)
	{
		coef[made] = BN_secure_new();
		/* the loop's increment counts this slot, so it is freed below */
		if (coef[made] == NULL ||
			(made == 0 ? BN_bin2bn(secret, SECAGG_KEY_LEN, coef[0]) == NULL
			 : BN_priv_rand_range(coef[made], p) != 1))
			err = "could not draw a share polynomial";
	}
	for (int i = 1; err == NULL && i <= n; i++)
	{
		/* Horner */
		if (!BN_set_word(x, (BN_ULONG) i) || !BN_copy(y, coef[t - 1]))
			err = "BIGNUM failed";
		for (int k = t - 2; err == NULL && k >= 0; k--)
			if (!BN_mod_mul(y, y, x, p, bn) || !BN_mod_add(y, y, coef[k], p, bn))
				err = "BIGNUM failed";
		if (err == NULL &&
			BN_bn2binpad(y, shares + (size_t) (i - 1) * SECAGG_SHARE_LEN, SECAGG_SHARE_LEN) != SECAGG_SHARE_LEN)
			err = "BIGNUM failed";
	}
	for (int k = 0; k < made; k++)
		BN_clear_free(coef[k]);
	BN_clear_free(y);
	BN_free(x);
	BN_free(p);
	BN_CTX_free(bn);
	return err;
}

const char *
floral_crypto_combine(const int *xs, const uint8_t *shares, int k, uint8_t secret[SECAGG_KEY_LEN])
{
	BN_CTX	   *bn = BN_CTX_secure_new();
	BIGNUM	   *p = field_prime();
	BIGNUM	   *acc = BN_secure_new(),
			   *y = BN_secure_new(),
			   *num = BN_new(),
			   *den = BN_new(),
			   *xi = BN_new(),
			   *xj = BN_new(),
			   *d = BN_new();
	const char *err = NULL;

	if (bn == NULL || p == NULL || acc == NULL || y == NULL || num == NULL ||
		den == NULL || xi == NULL || xj == NULL || d == NULL)
		err = "out of memory in BIGNUM";
	else
		BN_zero(acc);
	/* Lagrange at 0: secret = sum_i y_i prod_{j != i} x_j / (x_j - x_i) */
	for (int i = 0; err == NULL && i < k; i++)
	{
		if (BN_bin2bn(shares + (size_t) i * SECAGG_SHARE_LEN, SECAGG_SHARE_LEN, y) == NULL ||
			BN_cmp(y, p) >= 0)
		{
			err = "a share is not an element of the field";
			break;
		}
		BN_one(num);
		BN_one(den);
		BN_set_word(xi, (BN_ULONG) xs[i]);
		for (int j = 0; err == NULL && j < k; j++)
		{
			if (j == i)
				continue;
			BN_set_word(xj, (BN_ULONG) xs[j]);
			if (!BN_mod_mul(num, num, xj, p, bn) || !BN_mod_sub(d, xj, xi, p, bn) ||
				!BN_mod_mul(den, den, d, p, bn))
				err = "BIGNUM failed";
		}
		if (err == NULL &&
			(BN_mod_inverse(den, den, p, bn) == NULL || !BN_mod_mul(y, y, num, p, bn) ||
			 !BN_mod_mul(y, y, den, p, bn) || !BN_mod_add(acc, acc, y, p, bn)))
			err = "BIGNUM failed";
	}
	/* shares that do not belong together give a value out of range */
	if (err == NULL && BN_num_bytes(acc) > SECAGG_KEY_LEN)
		err = "the shares do not combine into a secret";
	if (err == NULL && BN_bn2binpad(acc, secret, SECAGG_KEY_LEN) != SECAGG_KEY_LEN)
		err = "BIGNUM failed";
	BN_clear_free(acc);
	BN_clear_free(y);
	BN_free(num);
	BN_free(den);
	BN_free(xi);
	BN_free(xj);
	BN_free(d);
	BN_free(p);
	BN_CTX_free(bn);
	return err;
}

/* ---------------------------------------------------------------- SQL side */

static void
check_ok(const char *err, int sqlstate)
{
	if (err != NULL)
		ereport(ERROR,
				(errcode(sqlstate),
				 errmsg("secure aggregation: %s", err)));
}

/* a bytea argument of an exact length; NULL is an error */
static const uint8_t *
fixed_bytea(FunctionCallInfo fcinfo, int arg, size_t len, const char *what)
{
	bytea	   *b;

	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("secure aggregation: %s must not be NULL", what)));
	b = PG_GETARG_BYTEA_PP(arg);
	if (VARSIZE_ANY_EXHDR(b) != len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: %s must have %zu bytes, not %zu",
						what, len, (size_t) VARSIZE_ANY_EXHDR(b))));
	return (const uint8_t *) VARDATA_ANY(b);
}

static char *
text_arg(FunctionCallInfo fcinfo, int arg, const char *what)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("secure aggregation: %s must not be NULL", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(arg));
}

static int32
int_arg(FunctionCallInfo fcinfo, int arg, const char *what)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("secure aggregation: %s must not be NULL", what)));
	return PG_GETARG_INT32(arg);
}

/*
 * The context every derivation names: model, round, attempt, a purpose and
 * up to two parties.  Fields end with a NUL byte (text holds none), numbers
 * are big-endian, so two different contexts never give the same bytes.
 */
static void
context(StringInfo s, const char *model, int32 round, int32 attempt,
		const char *purpose, const char *a, const char *b)
{
	uint32		r = pg_hton32((uint32) round),
				t = pg_hton32((uint32) attempt);

	initStringInfo(s);
	appendBinaryStringInfo(s, model, strlen(model) + 1);
	appendBinaryStringInfo(s, (char *) &r, 4);
	appendBinaryStringInfo(s, (char *) &t, 4);
	appendBinaryStringInfo(s, purpose, strlen(purpose) + 1);
	if (a)
		appendBinaryStringInfo(s, a, strlen(a) + 1);
	if (b)
		appendBinaryStringInfo(s, b, strlen(b) + 1);
}

static bytea *
new_bytea(size_t len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	return b;
}

/* a one-dimensional array argument without NULLs, deconstructed */
static int
array_arg(FunctionCallInfo fcinfo, int arg, Oid type, Datum **elems, const char *what)
{
	ArrayType  *a;
	int16		typlen;
	bool		byval;
	char		align;
	bool	   *nulls;
	int			n;

	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("secure aggregation: %s must not be NULL", what)));
	a = PG_GETARG_ARRAYTYPE_P(arg);
	if (ARR_NDIM(a) > 1 || ARR_ELEMTYPE(a) != type)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: %s must be a one-dimensional array", what)));
	get_typlenbyvalalign(type, &typlen, &byval, &align);
	deconstruct_array(a, type, typlen, byval, align, elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("secure aggregation: %s must not hold NULLs", what)));
	if (n > SECAGG_MAX_PARTIES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("secure aggregation: %s has %d elements, at most %d are supported",
						what, n, SECAGG_MAX_PARTIES)));
	return n;
}

static const uint8_t *
key_elem(Datum d, const char *what)
{
	bytea	   *b = DatumGetByteaPP(d);

	if (VARSIZE_ANY_EXHDR(b) != SECAGG_KEY_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: every %s must have %d bytes", what, SECAGG_KEY_LEN)));
	return (const uint8_t *) VARDATA_ANY(b);
}

/*
 * floral._secagg_keypair() returns (private bytea, public bytea): a fresh
 * X25519 key pair from OpenSSL's generator.
 */
Datum
floral_secagg_keypair(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	bytea	   *priv = new_bytea(SECAGG_KEY_LEN),
			   *pub = new_bytea(SECAGG_KEY_LEN);

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "floral._secagg_keypair must return a record");
	check_ok(floral_crypto_keypair((uint8_t *) VARDATA(priv), (uint8_t *) VARDATA(pub)),
			 ERRCODE_INTERNAL_ERROR);
	values[0] = PointerGetDatum(priv);
	values[1] = PointerGetDatum(pub);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/* floral._secagg_public(private bytea) returns bytea: its X25519 public key */
Datum
floral_secagg_public(PG_FUNCTION_ARGS)
{
	const uint8_t *priv = fixed_bytea(fcinfo, 0, SECAGG_KEY_LEN, "private key");
	bytea	   *pub = new_bytea(SECAGG_KEY_LEN);

	check_ok(floral_crypto_public(priv, (uint8_t *) VARDATA(pub)), ERRCODE_INVALID_PARAMETER_VALUE);
	PG_RETURN_BYTEA_P(pub);
}

/* floral._secagg_seed() returns bytea: 32 bytes from OpenSSL's generator */
Datum
floral_secagg_seed(PG_FUNCTION_ARGS)
{
	bytea	   *s = new_bytea(SECAGG_KEY_LEN);

	check_ok(floral_crypto_random((uint8_t *) VARDATA(s), SECAGG_KEY_LEN), ERRCODE_INTERNAL_ERROR);
	PG_RETURN_BYTEA_P(s);
}

/*
 * floral._secagg_make_shares(model, round, attempt, sender, c_private,
 *		s_private, b_seed, threshold, recipients text[], c_publics bytea[])
 * returns bytea[]: the sender's key s_private and seed b_seed, each split
 * into threshold-of-n Shamir shares (n recipients, the sender among them;
 * recipient i gets the shares at x = i), every pair sealed with
 * ChaCha20-Poly1305 under a key only the sender and that recipient can
 * derive, bound to (model, round, attempt, sender, recipient).
 */
Datum
floral_secagg_make_shares(PG_FUNCTION_ARGS)
{
	char	   *model = text_arg(fcinfo, 0, "model");
	int32		round = int_arg(fcinfo, 1, "round");
	int32		attempt = int_arg(fcinfo, 2, "attempt");
	char	   *sender = text_arg(fcinfo, 3, "sender");
	const uint8_t *c_priv = fixed_bytea(fcinfo, 4, SECAGG_KEY_LEN, "c_private");
	const uint8_t *s_priv = fixed_bytea(fcinfo, 5, SECAGG_KEY_LEN, "s_private");
	const uint8_t *b_seed = fixed_bytea(fcinfo, 6, SECAGG_KEY_LEN, "b_seed");
	int32		t = int_arg(fcinfo, 7, "threshold");
	Datum	   *names,
			   *pubs;
	int			n = array_arg(fcinfo, 8, TEXTOID, &names, "recipients");
	int			np = array_arg(fcinfo, 9, BYTEAOID, &pubs, "c_publics");
	uint8_t    *s_shares,
			   *b_shares;
	Datum	   *out;
	uint8_t		plain[SECAGG_PLAIN_LEN];

	if (n != np || n < 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: need at least 2 recipients, each with one public key")));
	if (t < 1 || t > n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: threshold %d is not between 1 and %d", t, n)));
	s_shares = palloc((size_t) n * SECAGG_SHARE_LEN);
	b_shares = palloc((size_t) n * SECAGG_SHARE_LEN);
	check_ok(floral_crypto_split(s_priv, n, t, s_shares), ERRCODE_INTERNAL_ERROR);
	check_ok(floral_crypto_split(b_seed, n, t, b_shares), ERRCODE_INTERNAL_ERROR);
	out = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
	{
		char	   *to = TextDatumGetCString(names[i]);
		const uint8_t *pub = key_elem(pubs[i], "c_public");
		StringInfoData info;
		uint8_t		key[SECAGG_KEY_LEN];
		bytea	   *sealed = new_bytea(SECAGG_SEALED_LEN);
		const char *err;

		plain[0] = (uint8_t) ((i + 1) >> 8);
		plain[1] = (uint8_t) ((i + 1) & 0xff);
		memcpy(plain + 2, s_shares + (size_t) i * SECAGG_SHARE_LEN, SECAGG_SHARE_LEN);
		memcpy(plain + 2 + SECAGG_SHARE_LEN, b_shares + (size_t) i * SECAGG_SHARE_LEN, SECAGG_SHARE_LEN);
		context(&info, model, round, attempt, "share", sender, to);
		err = floral_crypto_agree(c_priv, pub, (uint8_t *) info.data, info.len, key);
		if (err == NULL)
			err = floral_crypto_seal(key, (uint8_t *) info.data, info.len, plain, (uint8_t *) VARDATA(sealed));
		OPENSSL_cleanse(key, sizeof(key));
		OPENSSL_cleanse(plain, sizeof(plain));
		check_ok(err, ERRCODE_INVALID_PARAMETER_VALUE);
		out[i] = PointerGetDatum(sealed);
	}
	OPENSSL_cleanse(s_shares, (size_t) n * SECAGG_SHARE_LEN);
	OPENSSL_cleanse(b_shares, (size_t) n * SECAGG_SHARE_LEN);
	PG_RETURN_ARRAYTYPE_P(construct_array(out, n, BYTEAOID, -1, false, TYPALIGN_INT));
}

/*
 * floral._secagg_open_share(model, round, attempt, sender, recipient,
 *		c_private, sender_c_public, sealed) returns (x int, s_share bytea,
 *		b_share bytea): what the sender sealed for this recipient.  A share
 * altered on the way, or sealed for another round, attempt, sender or
 * recipient (a replay), does not authenticate: SQLSTATE 28000.
 */
Datum
floral_secagg_open_share(PG_FUNCTION_ARGS)
{
	char	   *model = text_arg(fcinfo, 0, "model");
	int32		round = int_arg(fcinfo, 1, "round");
	int32		attempt = int_arg(fcinfo, 2, "attempt");
	char	   *sender = text_arg(fcinfo, 3, "sender");
	char	   *recipient = text_arg(fcinfo, 4, "recipient");
	const uint8_t *c_priv = fixed_bytea(fcinfo, 5, SECAGG_KEY_LEN, "c_private");
	const uint8_t *pub = fixed_bytea(fcinfo, 6, SECAGG_KEY_LEN, "sender_c_public");
	const uint8_t *sealed = fixed_bytea(fcinfo, 7, SECAGG_SEALED_LEN, "sealed share");
	StringInfoData info;
	uint8_t		key[SECAGG_KEY_LEN];
	uint8_t		plain[SECAGG_PLAIN_LEN];
	const char *err;
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	bytea	   *s = new_bytea(SECAGG_SHARE_LEN),
			   *b = new_bytea(SECAGG_SHARE_LEN);

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "floral._secagg_open_share must return a record");
	context(&info, model, round, attempt, "share", sender, recipient);
	err = floral_crypto_agree(c_priv, pub, (uint8_t *) info.data, info.len, key);
	check_ok(err, ERRCODE_INVALID_PARAMETER_VALUE);
	err = floral_crypto_open(key, (uint8_t *) info.data, info.len, sealed, plain);
	OPENSSL_cleanse(key, sizeof(key));
	if (err != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("secure aggregation: the share from branch \"%s\" to branch \"%s\" does not authenticate",
						sender, recipient),
				 errdetail("It was altered, or sealed for another model, round, attempt or pair of branches.")));
	values[0] = Int32GetDatum(((int) plain[0] << 8) | plain[1]);
	memcpy(VARDATA(s), plain + 2, SECAGG_SHARE_LEN);
	memcpy(VARDATA(b), plain + 2 + SECAGG_SHARE_LEN, SECAGG_SHARE_LEN);
	OPENSSL_cleanse(plain, sizeof(plain));
	values[1] = PointerGetDatum(s);
	values[2] = PointerGetDatum(b);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/*
 * floral._secagg_combine(xs int[], shares bytea[], threshold int) returns
 * bytea: the 32-byte secret behind at least threshold shares at distinct
 * points.  Shares that do not belong to one secret give an error, or a
 * value the caller's check (the public key) refuses.
 */
Datum
floral_secagg_combine(PG_FUNCTION_ARGS)
{
	Datum	   *xd,
			   *sd;
	int			k = array_arg(fcinfo, 0, INT4OID, &xd, "xs");
	int			ks = array_arg(fcinfo, 1, BYTEAOID, &sd, "shares");
	int32		t = int_arg(fcinfo, 2, "threshold");
	int		   *xs;
	uint8_t    *shares;
	bytea	   *secret = new_bytea(SECAGG_KEY_LEN);

	if (k != ks)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: %d points but %d shares", k, ks)));
	if (t < 1 || k < t)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("secure aggregation: %d shares, the threshold is %d", k, t)));
	xs = palloc(sizeof(int) * k);
	shares = palloc((size_t) k * SECAGG_SHARE_LEN);
	for (int i = 0; i < k; i++)
	{
		bytea	   *b = DatumGetByteaPP(sd[i]);

		xs[i] = DatumGetInt32(xd[i]);
		if (xs[i] < 1 || xs[i] > SECAGG_MAX_PARTIES)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("secure aggregation: share point %d is out of range", xs[i])));
		for (int j = 0; j < i; j++)
			if (xs[j] == xs[i])
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("secure aggregation: two shares at point %d", xs[i])));
		if (VARSIZE_ANY_EXHDR(b) != SECAGG_SHARE_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("secure aggregation: every share must have %d bytes", SECAGG_SHARE_LEN)));
		memcpy(shares + (size_t) i * SECAGG_SHARE_LEN, VARDATA_ANY(b), SECAGG_SHARE_LEN);
	}
	check_ok(floral_crypto_combine(xs, shares, k, (uint8_t *) VARDATA(secret)),
			 ERRCODE_INVALID_PARAMETER_VALUE);
	OPENSSL_cleanse(shares, (size_t) k * SECAGG_SHARE_LEN);
	PG_RETURN_BYTEA_P(secret);
}

/* fixed point, big-endian words; refuses what the sum could not hold */
static uint64_t
quantize(double v, const char *what)
{
	if (!(fabs(v) < SECAGG_MAX_ABS))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("secure aggregation: %s value %g is outside the range it can sum", what, v),
				 errdetail("Values travel in fixed point with step 2^-%d and magnitude below 2^33.",
						   SECAGG_FRAC_BITS)));
	return (uint64_t) (int64_t) llround(ldexp(v, SECAGG_FRAC_BITS));
}

static void
put_words(uint8_t *out, const uint64_t *w, size_t n)
{
	for (size_t i = 0; i < n; i++)
	{
		uint64_t	u = pg_hton64(w[i]);

		memcpy(out + i * 8, &u, 8);
	}
}

static void
get_words(uint64_t *w, const uint8_t *in, size_t n)
{
	for (size_t i = 0; i < n; i++)
	{
		uint64_t	u;

		memcpy(&u, in + i * 8, 8);
		w[i] = pg_ntoh64(u);
	}
}

/*
 * floral._secagg_quantize(examples, weights real[], sums tensor, loss_sum,
 * tenants) returns bytea: a branch's update in fixed point, before masking
 * (examples, tenants, loss_sum, weights, sums; 8 bytes each).
 */
Datum
floral_secagg_quantize(PG_FUNCTION_ARGS)
{
	double		examples = PG_GETARG_FLOAT8(0);
	ArrayType  *wa = PG_GETARG_ARRAYTYPE_P(1);
	FloralTensor *t = PG_GETARG_TENSOR_P(2);
	double		loss_sum = PG_GETARG_FLOAT8(3);
	int32		tenants = PG_GETARG_INT32(4);
	int			C;
	int64		n = floral_tensor_numel(t);
	const float *v = TENSOR_DATA(t);
	uint64_t   *w;
	bytea	   *out;
	float	   *M;

	if (ARR_NDIM(wa) > 1 || ARR_ELEMTYPE(wa) != FLOAT4OID || array_contains_nulls(wa))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: weights must be a real[] without NULLs")));
	C = ArrayGetNItems(ARR_NDIM(wa), ARR_DIMS(wa));
	if (C > FLORAL_MAX_ADAPTORS || n + C + 3 > (int64) (MaxAllocSize / 8 - VARHDRSZ))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("secure aggregation: the update is too large")));
	M = (float *) ARR_DATA_PTR(wa);
	w = palloc(sizeof(uint64_t) * (n + C + 3));
	w[0] = quantize(examples, "examples");
	w[1] = quantize(tenants, "tenants");
	w[2] = quantize(loss_sum, "loss_sum");
	for (int c = 0; c < C; c++)
		w[3 + c] = quantize(M[c], "weight");
	for (int64 i = 0; i < n; i++)
		w[3 + C + i] = quantize(v[i], "sum");
	out = new_bytea((n + C + 3) * 8);
	put_words((uint8_t *) VARDATA(out), w, n + C + 3);
	pfree(w);
	PG_RETURN_BYTEA_P(out);
}

/* the seed of the mask pair (u, v) share: from u's key and v's public key */
static void
pair_seed(const char *model, int32 round, int32 attempt, const char *u, const char *v,
		  const uint8_t *priv, const uint8_t *peer_pub, uint8_t seed[SECAGG_KEY_LEN])
{
	StringInfoData info;
	const char *lo = strcmp(u, v) < 0 ? u : v;
	const char *hi = strcmp(u, v) < 0 ? v : u;

	context(&info, model, round, attempt, "pair mask", lo, hi);
	check_ok(floral_crypto_agree(priv, peer_pub, (uint8_t *) info.data, info.len, seed),
			 ERRCODE_INVALID_PARAMETER_VALUE);
	pfree(info.data);
}

static void
self_seed(const char *model, int32 round, int32 attempt, const char *u,
		  const uint8_t *b, uint8_t seed[SECAGG_KEY_LEN])
{
	StringInfoData info;

	context(&info, model, round, attempt, "self mask", u, NULL);
	check_ok(floral_crypto_expand(b, (uint8_t *) info.data, info.len, seed), ERRCODE_INTERNAL_ERROR);
	pfree(info.data);
}

static size_t
words_of(bytea *b, const char *what)
{
	size_t		len = VARSIZE_ANY_EXHDR(b);

	if (len == 0 || len % 8 != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: %s must be a whole number of 8-byte words", what)));
	return len / 8;
}

/*
 * floral._secagg_mask(model, round, attempt, me, s_private, b_seed,
 *		peers text[], s_publics bytea[], quantized bytea) returns bytea:
 * the quantized update plus the self mask and one pairwise mask for every
 * other peer (added when me sorts before the peer, subtracted after).
 */
Datum
floral_secagg_mask(PG_FUNCTION_ARGS)
{
	char	   *model = text_arg(fcinfo, 0, "model");
	int32		round = int_arg(fcinfo, 1, "round");
	int32		attempt = int_arg(fcinfo, 2, "attempt");
	char	   *me = text_arg(fcinfo, 3, "branch");
	const uint8_t *s_priv = fixed_bytea(fcinfo, 4, SECAGG_KEY_LEN, "s_private");
	const uint8_t *b_seed = fixed_bytea(fcinfo, 5, SECAGG_KEY_LEN, "b_seed");
	Datum	   *names,
			   *pubs;
	int			n = array_arg(fcinfo, 6, TEXTOID, &names, "peers");
	int			np = array_arg(fcinfo, 7, BYTEAOID, &pubs, "s_publics");
	bytea	   *q;
	size_t		nw;
	uint64_t   *acc;
	uint8_t		seed[SECAGG_KEY_LEN];
	bytea	   *out;
	bool		found = false;

	if (PG_ARGISNULL(8))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("secure aggregation: the update must not be NULL")));
	q = PG_GETARG_BYTEA_PP(8);
	nw = words_of(q, "the quantized update");
	if (n != np)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: %d peers but %d public keys", n, np)));
	acc = palloc(sizeof(uint64_t) * nw);
	get_words(acc, (const uint8_t *) VARDATA_ANY(q), nw);
	self_seed(model, round, attempt, me, b_seed, seed);
	check_ok(floral_crypto_add_prg(acc, nw, seed, +1), ERRCODE_INTERNAL_ERROR);
	for (int i = 0; i < n; i++)
	{
		char	   *v = TextDatumGetCString(names[i]);

		if (strcmp(v, me) == 0)
		{
			found = true;
			continue;
		}
		pair_seed(model, round, attempt, me, v, s_priv, key_elem(pubs[i], "s_public"), seed);
		check_ok(floral_crypto_add_prg(acc, nw, seed, strcmp(me, v) < 0 ? +1 : -1), ERRCODE_INTERNAL_ERROR);
	}
	OPENSSL_cleanse(seed, sizeof(seed));
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: branch \"%s\" is not among the peers", me)));
	out = new_bytea(nw * 8);
	put_words((uint8_t *) VARDATA(out), acc, nw);
	pfree(acc);
	PG_RETURN_BYTEA_P(out);
}

static double
dequantize(uint64_t w)
{
	return ldexp((double) (int64_t) w, -SECAGG_FRAC_BITS);
}

/*
 * floral._secagg_unmask(model, round, attempt, masked bytea[], senders
 *		text[], sender_s_publics bytea[], sender_b_seeds bytea[], dropped
 *		text[], dropped_s_privates bytea[], adaptors int) returns (examples,
 *		weights, sums, loss_sum, tenants): the sum of the senders' updates.
 * The pairwise masks among senders cancel in the sum; each sender's self
 * mask is subtracted from its recovered seed; the masks senders share with
 * dropped branches are subtracted from the dropped branches' recovered keys.
 */
Datum
floral_secagg_unmask(PG_FUNCTION_ARGS)
{
	char	   *model = text_arg(fcinfo, 0, "model");
	int32		round = int_arg(fcinfo, 1, "round");
	int32		attempt = int_arg(fcinfo, 2, "attempt");
	Datum	   *masked,
			   *senders,
			   *spubs,
			   *bseeds,
			   *dropped,
			   *dprivs;
	int			k = array_arg(fcinfo, 3, BYTEAOID, &masked, "masked");
	int			k1 = array_arg(fcinfo, 4, TEXTOID, &senders, "senders");
	int			k2 = array_arg(fcinfo, 5, BYTEAOID, &spubs, "sender_s_publics");
	int			k3 = array_arg(fcinfo, 6, BYTEAOID, &bseeds, "sender_b_seeds");
	int			d = array_arg(fcinfo, 7, TEXTOID, &dropped, "dropped");
	int			d1 = array_arg(fcinfo, 8, BYTEAOID, &dprivs, "dropped_s_privates");
	int32		C = int_arg(fcinfo, 9, "adaptors");
	size_t		nw = 0;
	uint64_t   *acc = NULL;
	uint8_t		seed[SECAGG_KEY_LEN];
	TupleDesc	desc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	float		M[FLORAL_MAX_ADAPTORS];
	FloralTensor *t;
	int64		n;
	double		tenants;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "floral._secagg_unmask must return a record");
	if (k < 1 || k != k1 || k != k2 || k != k3 || d != d1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: every sender needs a masked update, a public key and a seed, every dropped branch a key")));
	if (C < 0 || C > FLORAL_MAX_ADAPTORS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secure aggregation: %d adaptors is out of range", C)));
	for (int i = 0; i < k; i++)
	{
		bytea	   *y = DatumGetByteaPP(masked[i]);
		size_t		m = words_of(y, "a masked update");
		uint64_t   *w;

		if (acc == NULL)
		{
			nw = m;
			if (nw < (size_t) (3 + C + 1))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("secure aggregation: a masked update is too short")));
			acc = palloc0(sizeof(uint64_t) * nw);
		}
		else if (m != nw)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("secure aggregation: masked updates of different sizes")));
		w = palloc(sizeof(uint64_t) * nw);
		get_words(w, (const uint8_t *) VARDATA_ANY(y), nw);
		for (size_t j = 0; j < nw; j++)
			acc[j] += w[j];
		pfree(w);
	}
	for (int i = 0; i < k; i++)
	{
		char	   *u = TextDatumGetCString(senders[i]);

		self_seed(model, round, attempt, u, key_elem(bseeds[i], "b_seed"), seed);
		check_ok(floral_crypto_add_prg(acc, nw, seed, -1), ERRCODE_INTERNAL_ERROR);
		for (int j = 0; j < d; j++)
		{
			char	   *v = TextDatumGetCString(dropped[j]);

			if (strcmp(u, v) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("secure aggregation: branch \"%s\" cannot both send and drop", u)));
			/* u added +p_uv when u < v: take off what u added */
			pair_seed(model, round, attempt, v, u, key_elem(dprivs[j], "dropped key"),
					  key_elem(spubs[i], "s_public"), seed);
			check_ok(floral_crypto_add_prg(acc, nw, seed, strcmp(u, v) < 0 ? -1 : +1), ERRCODE_INTERNAL_ERROR);
		}
	}
	OPENSSL_cleanse(seed, sizeof(seed));

	n = (int64) nw - 3 - C;
	t = floral_tensor_new_1d(n);
	for (int64 i = 0; i < n; i++)
		TENSOR_DATA(t)[i] = (float) dequantize(acc[3 + C + i]);
	for (int c = 0; c < C; c++)
		M[c] = (float) dequantize(acc[3 + c]);
	values[0] = Float8GetDatum(dequantize(acc[0]));
	values[1] = floral_real_array(M, C);
	values[2] = PointerGetDatum(t);
	values[3] = Float8GetDatum(dequantize(acc[2]));
	/* a garbage sum (wrong reveals, a forged input) may hold anything */
	tenants = rint(dequantize(acc[1]));
	if (!(tenants >= (double) PG_INT32_MIN && tenants <= (double) PG_INT32_MAX))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("secure aggregation: the unmasked tenant count %g is out of range", tenants),
				 errdetail("The masks were not removed: a reveal or a masked input is wrong.")));
	values[4] = Int32GetDatum((int32) tenants);
	pfree(acc);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
