/*
 * secagg.h
 *	  The cryptography of secure aggregation (Bonawitz et al., CCS 2017),
 *	  every primitive from OpenSSL's libcrypto.
 *
 * Branches mask their fixed-point update with pairwise masks that cancel in
 * the sum and with a self mask; the seeds of both are t-of-n Shamir shared,
 * encrypted pairwise, so that the coordinator can remove what a dropped
 * branch left and never learns a single branch's update.  The protocol
 * itself (who sends what, when) is in floral--1.0.sql; this file only
 * computes.
 *
 *	  X25519		key agreement (EVP_PKEY_X25519)
 *	  HKDF-SHA256	every key and seed is derived with a context that names
 *					the model, round, attempt and the parties, so nothing
 *					derived for one round or pair serves another
 *	  ChaCha20		the pseudorandom generator that expands a seed into a mask
 *	  ChaCha20-Poly1305  the AEAD that carries shares through the coordinator
 *	  Shamir		over the prime field of 2^521 - 1, with BIGNUM arithmetic
 *
 * Like every header of floral, this one does not include postgres.h; the
 * helpers below do no error reporting of their own (they return a message,
 * or NULL on success), so that the SQL-callable wrappers free OpenSSL's
 * objects before they raise an error.
 */
#ifndef FLORAL_SECAGG_H
#define FLORAL_SECAGG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SECAGG_KEY_LEN		32	/* X25519 keys, seeds, derived keys */
#define SECAGG_SHARE_LEN	66	/* an element of GF(2^521 - 1), big-endian */
#define SECAGG_NONCE_LEN	12
#define SECAGG_TAG_LEN		16
/* x (2 bytes), then the shares of the mask key and of the self-mask seed */
#define SECAGG_PLAIN_LEN	(2 + 2 * SECAGG_SHARE_LEN)
#define SECAGG_SEALED_LEN	(SECAGG_NONCE_LEN + SECAGG_PLAIN_LEN + SECAGG_TAG_LEN)
#define SECAGG_MAX_PARTIES	1024

/*
 * Fixed point: a value v travels as round(v * 2^SECAGG_FRAC_BITS), an
 * integer modulo 2^64.  The step is 2^-20 (about 9.5e-7); a branch refuses
 * values of magnitude 2^33 or more (strictly below: each word is then at
 * most 2^53 - 1 in magnitude), so that the sum of up to SECAGG_MAX_PARTIES
 * = 2^10 branches stays below 2^63 and never wraps.
 */
#define SECAGG_FRAC_BITS	20
#define SECAGG_MAX_ABS		8589934592.0	/* 2^33 */

extern const char *floral_crypto_keypair(uint8_t priv[SECAGG_KEY_LEN], uint8_t pub[SECAGG_KEY_LEN]);
extern const char *floral_crypto_public(const uint8_t priv[SECAGG_KEY_LEN], uint8_t pub[SECAGG_KEY_LEN]);
extern const char *floral_crypto_random(uint8_t *out, size_t len);

/* HKDF-SHA256 of X25519(priv, peer_pub), or of a seed, with the given info */
extern const char *floral_crypto_agree(const uint8_t priv[SECAGG_KEY_LEN],
								const uint8_t peer_pub[SECAGG_KEY_LEN],
								const uint8_t *info, size_t info_len,
								uint8_t out[SECAGG_KEY_LEN]);
extern const char *floral_crypto_expand(const uint8_t seed[SECAGG_KEY_LEN],
								 const uint8_t *info, size_t info_len,
								 uint8_t out[SECAGG_KEY_LEN]);

/* acc[i] += sign * the i-th 64-bit word of ChaCha20(key), for n words */
extern const char *floral_crypto_add_prg(uint64_t *acc, size_t n,
								  const uint8_t key[SECAGG_KEY_LEN], int sign);

extern const char *floral_crypto_seal(const uint8_t key[SECAGG_KEY_LEN],
							   const uint8_t *aad, size_t aad_len,
							   const uint8_t plain[SECAGG_PLAIN_LEN],
							   uint8_t sealed[SECAGG_SEALED_LEN]);
/* fails (returns a message) when the share was altered or sealed for another context */
extern const char *floral_crypto_open(const uint8_t key[SECAGG_KEY_LEN],
							   const uint8_t *aad, size_t aad_len,
							   const uint8_t sealed[SECAGG_SEALED_LEN],
							   uint8_t plain[SECAGG_PLAIN_LEN]);

/* Shamir: n shares of a 32-byte secret at x = 1..n, any t of which recover it */
extern const char *floral_crypto_split(const uint8_t secret[SECAGG_KEY_LEN], int n, int t,
								uint8_t *shares /* n * SECAGG_SHARE_LEN */ );
extern const char *floral_crypto_combine(const int *xs, const uint8_t *shares, int k,
								  uint8_t secret[SECAGG_KEY_LEN]);

#endif
