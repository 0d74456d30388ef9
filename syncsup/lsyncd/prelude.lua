-- The Lsyncd world an imported config runs in (syncsup import-lsyncd).
--
-- This chunk runs once, with the full standard library, in a Lua state that
-- lives in a short-lived child process. It keeps what it needs in locals and
-- returns one function, run(text, chunkname, limit), that executes a config
-- in a fresh environment table holding only harmless globals plus recording
-- stand-ins for what Lsyncd gives configs: settings, sync, default and its
-- layers. Nothing here is reachable from the config except through those
-- stand-ins: no io, os (but getenv/time/date/clock), require, dofile,
-- loadfile, package, debug, coroutine or collectgarbage, and load accepts
-- text only.
--
-- The layers mirror Lsyncd 2.2's: same default values (delay 15 for rsync
-- and rsyncssh, 1 for direct; rsync -lts; deletes on), same inheritance
-- (a sync's integer-keyed entries are layers whose keys fill in what is not
-- set yet; tables merge key by key). Their functions are inert markers: the
-- importer recognises them by identity, which is how Lsyncd itself decides
-- what a sync does (its action function).

local stderr = io.stderr
local dsethook, dgetinfo = debug.sethook, debug.getinfo
local os_getenv, os_time, os_date, os_clock, os_difftime = os.getenv, os.time, os.date, os.clock,
    os.difftime
local load, pcall, error, type, pairs, ipairs, tostring, select, next, setmetatable, rawequal =
    load, pcall, error, type, pairs, ipairs, tostring, select, next, setmetatable, rawequal
local concat = table.concat

-- string.dump is the way to bytecode; the string metatable points at the
-- real string table, so remove it there, not only in the sandbox's copy.
string.dump = nil

local function copy(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
end

local function unavailable(name, why)
    return function()
        error(name .. " is not available in the importer's sandbox" .. (why or ""), 2)
    end
end

local function forbidden_table(name)
    return setmetatable({}, {
        __index = function(_, key)
            error(name .. "." .. tostring(key) .. " is not available in the importer's sandbox", 2)
        end,
        __newindex = function()
            error(name .. " is read-only in the importer's sandbox", 2)
        end,
    })
end

-- Functions of the default layers, by identity -> their Lsyncd name.
local builtin = {}
local function marker(name)
    local f = function()
        error(name .. "() is Lsyncd's runtime code; it cannot run while importing", 2)
    end
    builtin[f] = name
    return f
end

local function rsync_exitcodes()
    local t = { _merge = false, _verbatim = true }
    for _, c in ipairs({ 1, 2, 4, 25 }) do t[c] = "die" end
    for _, c in ipairs({ 3, 5, 6, 10, 11, 12, 14, 20, 21, 22, 30, 35, 255 }) do t[c] = "again" end
    t[0], t[23], t[24] = "ok", "ok", "ok"
    return t
end

local function make_default()
    local default = {
        _merge = {
            action = true, checkgauge = true, collect = true, delay = true, init = true,
            maxDelays = true, maxProcesses = true, prepare = true,
        },
        checkgauge = {},
        action = marker("default.action"),
        collect = marker("default.collect"),
        init = marker("default.init"),
        prepare = marker("default.prepare"),
        maxDelays = 1000,
        maxProcesses = 1,
        statusInterval = 10,
        rsyncExitCodes = rsync_exitcodes(),
        sshExitCodes = { _merge = false, _verbatim = true, [0] = "ok", [255] = "again" },
    }
    local rsync = {
        checkgauge = {},
        action = marker("default.rsync.action"),
        init = marker("default.rsync.init"),
        prepare = marker("default.rsync.prepare"),
        delete = true,
        exitcodes = default.rsyncExitCodes,
        rsync = { binary = "/usr/bin/rsync", links = true, times = true, protect_args = true },
        delay = 15,
    }
    default.rsync = rsync
    default.rsyncssh = {
        rsync,
        checkgauge = {},
        action = marker("default.rsyncssh.action"),
        collect = marker("default.rsyncssh.collect"),
        prepare = marker("default.rsyncssh.prepare"),
        maxProcesses = 1,
        onMove = true,
        delay = 15,
        exitcodes = false,
        rsyncExitCodes = default.rsyncExitCodes,
        sshExitCodes = default.sshExitCodes,
        ssh = { binary = "/usr/bin/ssh", _extra = {} },
    }
    default.direct = {
        checkgauge = { rsync.checkgauge },
        action = marker("default.direct.action"),
        collect = marker("default.direct.collect"),
        init = rsync.init,
        prepare = marker("default.direct.prepare"),
        delay = 1,
        onMove = true,
        rsync = rsync.rsync,
        rsyncExitCodes = default.rsyncExitCodes,
        delete = true,
        maxProcesses = 1,
    }
    return default
end

-- Lsyncd's inheritance: keys of the source fill keys the destination lacks
-- (tables merge recursively unless the source says _merge = false); a
-- source's _merge table limits which keys it gives; integer-keyed tables of
-- a non-verbatim source are further sources, other integer-keyed values
-- append; 'exitcodes' tables are verbatim (integer keys are plain keys).
local inherit

local function inherit_key(dst, key, value)
    if key == "_merge" or key == "_verbatim" then return end
    local have = dst[key]
    if type(value) == "table" then
        if have == nil then
            dst[key] = {}
            inherit(dst[key], value, key == "exitcodes")
        elseif type(have) == "table" and value._merge ~= false then
            inherit(have, value, key == "exitcodes")
        end
    elseif have == nil then
        dst[key] = value
    end
end

inherit = function(dst, src, verbatim)
    local only = src._merge
    local plain = verbatim or src._verbatim == true
    for key, value in pairs(src) do
        if (type(key) ~= "number" or plain) and (type(only) ~= "table" or only[key] == true) then
            inherit_key(dst, key, value)
        end
    end
    if src._verbatim ~= true then
        for _, value in ipairs(src) do
            if type(value) == "table" then
                inherit(dst, value)
            else
                dst[#dst + 1] = value
            end
        end
    end
end

local FROM_SETTINGS = { "delay", "maxDelays", "maxProcesses" }
local PRINT_LIMIT = 65536

local LIMIT_MESSAGE = "instruction limit exceeded"

return function(text, chunkname, limit)
    local result = {
        settings = {},        -- what settings{...} set, as Lsyncd's uSettings
        syncs = {},           -- { config = resolved table, line = n, from_settings = {...} }
        getenv = {},          -- { name, value } read at import time
        settings_assigned = false,
    }
    local source = "=" .. chunkname
    local printed = 0

    local function out(s)
        if printed < PRINT_LIMIT then
            printed = printed + #s
            stderr:write(s)
            if printed >= PRINT_LIMIT then stderr:write("\n(more output from the config suppressed)\n") end
        end
    end

    local function caller_line()
        for level = 3, 40 do
            local info = dgetinfo(level, "Sl")
            if not info then break end
            if info.source == source then return info.currentline end
        end
        return nil
    end

    local env = {}
    local default = make_default()
    local settings_fn

    settings_fn = function(arg)
        if type(arg) == "string" then return result.settings[arg] end
        if type(arg) ~= "table" then error("settings needs a table", 2) end
        for key, value in pairs(arg) do
            if type(key) == "number" then key, value = value, true end
            if type(key) ~= "string" then
                error("settings: keys must be names, got " .. type(key), 2)
            end
            result.settings[key] = value
        end
    end

    local function sync(opts)
        if type(opts) ~= "table" then error("sync needs a table, got " .. type(opts), 2) end
        local config = {}
        inherit(config, opts)
        inherit(config, default)
        local overridden = {}
        for _, key in ipairs(FROM_SETTINGS) do
            if result.settings[key] then
                config[key] = result.settings[key]
                overridden[key] = true
            end
        end
        result.syncs[#result.syncs + 1] = {
            config = config, line = caller_line(), from_settings = overridden,
        }
    end

    local function getenv(name)
        local value = os_getenv(name)
        result.getenv[#result.getenv + 1] = { tostring(name), value }
        return value
    end

    local function print_(...)
        local parts = {}
        for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
        out(concat(parts, "\t") .. "\n")
    end

    local function log_(category, ...)
        local parts = {}
        for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
        out(tostring(category) .. ": " .. concat(parts, "") .. "\n")
    end

    local function safe_load(chunk, name, mode, chunk_env)
        if type(chunk) ~= "string" then
            return nil, "load: only strings can be loaded in the importer's sandbox"
        end
        if mode ~= nil and mode ~= "t" then
            return nil, "load: only text chunks (mode 't') in the importer's sandbox"
        end
        return load(chunk, name, "t", chunk_env or env)
    end

    for _, name in ipairs({
        "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select", "tonumber",
        "tostring", "type", "rawequal", "rawget", "rawset", "rawlen", "setmetatable",
        "getmetatable", "_VERSION",
    }) do
        env[name] = _G[name]
    end
    env.string, env.table, env.math, env.utf8 = copy(string), copy(table), copy(math), copy(utf8)
    env.unpack = table.unpack
    env.os = setmetatable({
        getenv = getenv, time = os_time, date = os_date, clock = os_clock, difftime = os_difftime,
    }, getmetatable(forbidden_table("os")))
    env.io = forbidden_table("io")
    env.debug = forbidden_table("debug")
    env.package = forbidden_table("package")
    env.coroutine = forbidden_table("coroutine")
    env.require = unavailable("require", " (the import reads only the config file itself)")
    env.dofile = unavailable("dofile", " (the import reads only the config file itself)")
    env.loadfile = unavailable("loadfile", " (the import reads only the config file itself)")
    env.collectgarbage = unavailable("collectgarbage")
    env.load, env.loadstring = safe_load, safe_load
    env.print = print_
    env.log = log_
    env.settings = settings_fn
    env.sync = sync
    env.default = default
    for _, name in ipairs({
        "spawn", "spawnShell", "terminate", "now", "readdir", "alarm", "observefd",
        "nonobservefd",
    }) do
        env[name] = unavailable(name .. "()", " while importing (it is Lsyncd's runtime API)")
    end
    env._G = env

    local chunk, err = load(text, source, "t", env)
    if not chunk then return nil, err end

    -- Count instructions: past the limit every instruction fails, so a
    -- pcall inside an endless loop cannot swallow the error for long.
    local STEP = 1000
    local count, tripped, calls = 0, false, limit // STEP
    local limit_message = LIMIT_MESSAGE .. " (" .. limit .. " instructions: an endless loop?)"
    local function hook()
        count = count + 1
        if count > calls then
            if not tripped then
                tripped = true
                local line = caller_line()
                if line then limit_message = chunkname .. ":" .. line .. ": " .. limit_message end
                dsethook(hook, "", 1)
            end
            error(limit_message, 0)
        end
    end
    dsethook(hook, "", STEP)
    -- The hook stays set until the caller (Python) removes it: what runs
    -- below may still call the config's code (__pairs metamethods).
    local ok, run_err = pcall(chunk)
    if not ok then
        if type(run_err) ~= "string" then run_err = "error object: " .. tostring(run_err) end
        -- A variable the config reads but the import's environment lacks is
        -- the usual cause of a nil error: name it.
        local unset, seen = {}, {}
        for _, pair in ipairs(result.getenv) do
            if pair[2] == nil and not seen[pair[1]] then
                seen[pair[1]] = true
                unset[#unset + 1] = pair[1]
            end
        end
        if #unset > 0 then
            run_err = run_err .. " (os.getenv returned nil for " .. concat(unset, ", ")
                .. ": not set in the environment of the import; set "
                .. (#unset == 1 and "it" or "them") .. " and run it again)"
        end
        return nil, run_err
    end
    if not rawequal(env.settings, settings_fn) then
        if type(env.settings) ~= "table" then
            return nil, "settings was replaced by a " .. type(env.settings)
        end
        result.settings_assigned = true
        settings_fn(env.settings)
        for _, s in ipairs(result.syncs) do
            for _, key in ipairs(FROM_SETTINGS) do
                if result.settings[key] then
                    s.config[key] = result.settings[key]
                    s.from_settings[key] = true
                end
            end
        end
    end
    local function describe(f)
        local name = builtin[f]
        if name then return name, nil end
        local info = dgetinfo(f, "S")
        if info and info.source == source then return nil, info.linedefined end
        return nil, nil
    end
    return result, nil, describe
end
