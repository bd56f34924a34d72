# Shell functions shared by the gateway benchmarks (sourced, not run): scripts/bench-gateway and
# scripts/bench-cluster set up the same registry through the admin API.
#
#   bench_registry UPSTREAM_BASE   two agencies, a provider and a consumer system, service `dancu`
#                                  v1 published with UPSTREAM_BASE (e.g. http://127.0.0.1:PORT/api)
#                                  as its production URL, an approved active subscription with a rate
#                                  limit that never triggers (10^6/s, 10^12/day), and a credential;
#                                  sets CK and CS (its consumer key and secret)
#   bench_token GATEWAY            a bearer token from GATEWAY/token (client credentials, HTTP Basic)
#
# The path /dancu/v1/citizens on the gateway then reaches UPSTREAM_BASE/citizens.
# The caller provides: ADMIN (admin API base URL), API_TOKEN (an operator's API token), die MESSAGE,
# and json EXPR (prints EXPR of the JSON document on stdin, e.g. json '["id"]').

api() { # method path [json] -> body; fails on HTTP >= 300
  curl -fsS -X "$1" -H "Authorization: Bearer $API_TOKEN" -H 'Content-Type: application/json' ${3:+--data "$3"} "$ADMIN$2" \
    || die "admin API $1 $2 failed"
}

bench_registry() {
  local up="$1" sub cred
  api POST /api/v1/agencies '{"code":"000.00.00.H31","name":"UBND thành phố Hải Phòng"}' >/dev/null
  api POST /api/v1/agencies '{"code":"000.00.01.H31","name":"Sở Tư pháp Hải Phòng"}' >/dev/null
  api POST /api/v1/systems '{"id":"hp-dancu","agency":"000.00.00.H31","name":"CSDL dân cư","security":{"kind":"level","level":3}}' >/dev/null
  api POST /api/v1/systems '{"id":"stp-hotich","agency":"000.00.01.H31","name":"Hộ tịch","security":{"kind":"level","level":2}}' >/dev/null
  api POST /api/v1/services '{"context":"dancu","provider_system":"hp-dancu","name":"Tra cứu dân cư"}' >/dev/null
  api POST /api/v1/services/dancu/versions "{\"version\":\"v1\",\"upstream\":{\"production\":\"$up\"}}" >/dev/null
  api POST /api/v1/services/dancu/versions/v1/publish '{}' >/dev/null
  sub="$(api POST /api/v1/subscriptions '{"consumer_system":"stp-hotich","service":"dancu","version":"v1","environment":"production","purpose":"benchmark"}' | json '["id"]')"
  api POST "/api/v1/subscriptions/$sub/provider-approve" '{}' >/dev/null
  api POST "/api/v1/subscriptions/$sub/approve" '{}' >/dev/null
  api PUT "/api/v1/subscriptions/$sub/limits" '{"per_second":1000000,"per_day":1000000000000}' >/dev/null
  cred="$(api POST /api/v1/credentials '{"system":"stp-hotich","environment":"production"}')"
  CK="$(json '["consumer_key"]' <<<"$cred")"
  CS="$(json '["consumer_secret"]' <<<"$cred")"
}

bench_token() {
  local t
  t="$(curl -fsS -u "$CK:$CS" -d grant_type=client_credentials "$1/token" | json '["access_token"]')" || die "POST $1/token failed"
  [ -n "$t" ] || die "no access token from $1/token"
  printf '%s\n' "$t"
}
