#!/usr/bin/env bash
# Proves a backup can be restored: dumps DATABASE_URL with pg_dump -Fc, restores it into a new
# scratch database with pg_restore, and compares the row count of every table and a checksum of
# every preference row between the two. Exits non-zero on any difference. The scratch database is
# dropped afterwards; the source is only read.
#
#   DATABASE_URL=postgres://user:pass@host:5432/rlhf scripts/backup_restore_check.sh [dump-file]
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL to the database to check}"
dump=${1:-$(mktemp -t rlhf-backup.XXXXXX.dump)}
base=${DATABASE_URL%/*}
source_db=${DATABASE_URL##*/}
scratch_db="${source_db}_restore_check_$$"

pg_dump --format=custom --no-owner --file="$dump" "$DATABASE_URL"
psql -X -q "$base/postgres" -c "CREATE DATABASE \"$scratch_db\""
trap 'psql -X -q "$base/postgres" -c "DROP DATABASE IF EXISTS \"$scratch_db\"" >/dev/null' EXIT
pg_restore --no-owner --exit-on-error --dbname="$base/$scratch_db" "$dump"

fingerprint() {
  psql -X -At "$1" <<'SQL'
SELECT format('%s %s', c.relname,
              (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM public.%I', c.relname), false, true, '')))[1]::text)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY c.relname;
SELECT 'preferences-md5 ' || coalesce(md5(string_agg(p::text, E'\n' ORDER BY p.id)), 'empty') FROM annotation_preference p;
SQL
}

diff <(fingerprint "$DATABASE_URL") <(fingerprint "$base/$scratch_db")
echo "backup round trip OK: $(fingerprint "$base/$scratch_db" | wc -l) fingerprints equal; dump at $dump ($(du -h "$dump" | cut -f1))"
