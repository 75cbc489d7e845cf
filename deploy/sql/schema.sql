-- dynproxy default routing schema, read by the pgsql hook (hooks/pgsql, docs/hook-pgsql.md).
--
--   psql -v ON_ERROR_STOP=1 -d dynproxy -f deploy/sql/schema.sql
--
-- Idempotent: every object is created only when missing (tables, indexes, triggers) or
-- replaced in place (functions), all in one transaction, so loading it again (on every deploy)
-- is safe and keeps the data. It does not migrate changed table definitions: a column added
-- here later comes with its own ALTER TABLE ... ADD COLUMN IF NOT EXISTS.
--
-- Everything lives in schema `dynproxy`. The proxies only need to read:
--   GRANT USAGE ON SCHEMA dynproxy TO <proxy role>;
--   GRANT SELECT ON ALL TABLES IN SCHEMA dynproxy TO <proxy role>;
--   (functions are executable by PUBLIC by default)
--
-- A move of a user is one UPDATE (or SELECT dynproxy.move_user('alice', 'web2')); the
-- triggers below NOTIFY channel dynproxy_route so every proxy drops its cached route at once.
-- The channel name is fixed here; a hook configured with another notify_channel needs these
-- trigger functions edited to match.
--
-- Needs PostgreSQL 11 or later.

BEGIN;

CREATE SCHEMA IF NOT EXISTS dynproxy;

-- One row per backend web server.
CREATE TABLE IF NOT EXISTS dynproxy.backends (
    name text PRIMARY KEY,
    address text NOT NULL,                 -- numeric IP or host name
    ssh_port integer NOT NULL DEFAULT 22 CHECK (ssh_port BETWEEN 1 AND 65535),
    ftp_port integer NOT NULL DEFAULT 21 CHECK (ftp_port BETWEEN 1 AND 65535),
    hostkey_sha256 text,                   -- "SHA256:<base64>" pin of the backend's ssh host
                                           -- key; NULL = verify with known_hosts
    maintenance boolean NOT NULL DEFAULT false,
    maintenance_message text               -- shown to clients while maintenance is true
);

-- One row per customer account. Names are matched exactly (case-sensitive).
CREATE TABLE IF NOT EXISTS dynproxy.users (
    username text PRIMARY KEY,
    backend text NOT NULL REFERENCES dynproxy.backends (name) ON UPDATE CASCADE,
    backend_username text,                 -- NULL = same as username
    auth text NOT NULL DEFAULT 'password'
        CHECK (auth IN ('password', 'proxy-key', 'mapped-key')),
    key_path text,                         -- private key for proxy-key / mapped-key
                                           -- (NULL = the proxy's default key)
    enabled boolean NOT NULL DEFAULT true  -- false: the user does not exist for the proxy
);

-- Public keys a user may log in with (the proxy checks them; see docs/hook-pgsql.md).
CREATE TABLE IF NOT EXISTS dynproxy.authorized_keys (
    id bigserial PRIMARY KEY,
    username text NOT NULL REFERENCES dynproxy.users (username)
        ON DELETE CASCADE ON UPDATE CASCADE,
    key text NOT NULL                      -- one authorized_keys line: "ssh-ed25519 AAAA... c"
);

-- keys_query filters by username and sorts by id; the FK checks of users.backend need the
-- reverse index when a backend is renamed or deleted.
CREATE INDEX IF NOT EXISTS authorized_keys_username_id_idx
    ON dynproxy.authorized_keys (username, id);
CREATE INDEX IF NOT EXISTS users_backend_idx ON dynproxy.users (backend);

-- The route of one login: no row for an unknown or disabled user; status 'ok', or
-- 'maintenance' with the backend's maintenance_message. p_client (NULL when unknown) and
-- p_proto ('ssh' or 'ftp') are unused here: they are the hook's $2 and $3, for sites whose
-- own version of this function routes by client address or protocol.
-- backend_user is NULL when it equals the user name; hostkey NULL means "no pin".
CREATE OR REPLACE FUNCTION dynproxy.route(p_user text, p_client inet, p_proto text)
    RETURNS TABLE (status text, backend text, address text, ssh_port integer,
                   ftp_port integer, backend_user text, auth text, key_path text,
                   hostkey text, message text)
    LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN b.maintenance THEN 'maintenance' ELSE 'ok' END,
           b.name,
           b.address,
           b.ssh_port,
           b.ftp_port,
           u.backend_username,
           u.auth,
           u.key_path,
           b.hostkey_sha256,
           CASE WHEN b.maintenance THEN b.maintenance_message END
      FROM dynproxy.users u
      JOIN dynproxy.backends b ON b.name = u.backend
     WHERE u.username = p_user
       AND u.enabled
$$;

-- Move a user to another backend; raises an exception naming the problem for an unknown user
-- or backend. The users trigger sends the NOTIFY (the user's name: every proxy drops the cached
-- route). With p_kick it also sends '!kick <user>': every proxy ends that user's open sessions,
-- so nobody keeps working on the old backend (proxyctl move --kick). The kick is sent after the
-- UPDATE, and PostgreSQL delivers a transaction's notifications at COMMIT in the order they were
-- sent, so a proxy has dropped the old route before it ends the sessions: a client that
-- reconnects at once lands on the new backend.
CREATE OR REPLACE FUNCTION dynproxy.move_user(p_user text, p_backend text, p_kick boolean)
    RETURNS void
    LANGUAGE plpgsql
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM dynproxy.backends b WHERE b.name = p_backend) THEN
        RAISE EXCEPTION 'dynproxy.move_user: unknown backend "%"', p_backend
            USING ERRCODE = 'no_data_found';
    END IF;
    UPDATE dynproxy.users SET backend = p_backend WHERE username = p_user;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dynproxy.move_user: unknown user "%"', p_user
            USING ERRCODE = 'no_data_found';
    END IF;
    IF p_kick THEN
        PERFORM pg_notify('dynproxy_route', '!kick ' || p_user);
    END IF;
END
$$;

-- The original two-argument form: a move without kicking anyone.
CREATE OR REPLACE FUNCTION dynproxy.move_user(p_user text, p_backend text)
    RETURNS void
    LANGUAGE sql
AS $$
    SELECT dynproxy.move_user(p_user, p_backend, false)
$$;

-- ---- NOTIFY dynproxy_route: payload = a user name, or '*' for "every route" ----
-- One more payload, sent only by move_user(..., true) (or by hand): '!kick <user>' = drop the
-- user's cached route and end every open session of that user (hooks/pgsql, hook ABI 1.1).
-- A user name therefore must not start with "!kick ".
-- Notifications are delivered at COMMIT, and identical ones within a transaction are folded
-- into one, so a bulk UPDATE sends each name once.

-- users insert/update/delete -> the user's name (old and new name when renamed).
CREATE OR REPLACE FUNCTION dynproxy.notify_users()
    RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NULL;                       -- nothing changed: nothing to invalidate
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('dynproxy_route', OLD.username);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.username <> OLD.username) THEN
        PERFORM pg_notify('dynproxy_route', NEW.username);
    END IF;
    RETURN NULL;
END
$$;

-- authorized_keys insert/update/delete -> the owner's name (both owners if it changed).
CREATE OR REPLACE FUNCTION dynproxy.notify_authorized_keys()
    RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('dynproxy_route', OLD.username);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.username <> OLD.username) THEN
        PERFORM pg_notify('dynproxy_route', NEW.username);
    END IF;
    RETURN NULL;
END
$$;

-- backends update/delete -> '*': every user of the backend may have a new route, and the
-- proxy cannot tell which users those are.
CREATE OR REPLACE FUNCTION dynproxy.notify_backends()
    RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('dynproxy_route', '*');
    RETURN NULL;
END
$$;

-- Triggers: created when missing (CREATE OR REPLACE TRIGGER needs PostgreSQL 14; this works
-- on older servers too, and the logic lives in the functions above, which are replaced).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = 'dynproxy.users'::regclass
                      AND tgname = 'dynproxy_users_notify') THEN
        CREATE TRIGGER dynproxy_users_notify
            AFTER INSERT OR UPDATE OR DELETE ON dynproxy.users
            FOR EACH ROW EXECUTE FUNCTION dynproxy.notify_users();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = 'dynproxy.authorized_keys'::regclass
                      AND tgname = 'dynproxy_authorized_keys_notify') THEN
        CREATE TRIGGER dynproxy_authorized_keys_notify
            AFTER INSERT OR UPDATE OR DELETE ON dynproxy.authorized_keys
            FOR EACH ROW EXECUTE FUNCTION dynproxy.notify_authorized_keys();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = 'dynproxy.backends'::regclass
                      AND tgname = 'dynproxy_backends_notify') THEN
        CREATE TRIGGER dynproxy_backends_notify
            AFTER UPDATE OR DELETE ON dynproxy.backends
            FOR EACH ROW EXECUTE FUNCTION dynproxy.notify_backends();
    END IF;
END
$$;

COMMIT;
