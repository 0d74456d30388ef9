-- Custom actions at every layer of the manual: shell strings (layer 3),
-- Lua functions calling spawn (layer 2), and a whole action with its own
-- init, prepare and collect (layer 1).
local cpcmd = {
    delay = 1,
    maxProcesses = 1,
    onStartup = "cp -a ^source/. ^target/",
    onCreate = "cp -a ^sourcePathname ^targetPathdir",
    onModify = "cp -a ^sourcePathname ^targetPathdir",
    onDelete = "rm -rf ^targetPathname",
    onMove = "mv ^o.targetPathname ^d.targetPathname",
}
sync { cpcmd, source = "@BASE@/src", target = "@BASE@/dst-shell" }

local touch = {
    delay = 1,
    onAttrib = function(event)
        spawn(event, "/usr/bin/touch", event.targetPathname)
    end,
}
sync { touch, source = "@BASE@/src", target = "@BASE@/dst-attrib" }

local layer1 = {
    delay = 1,
    init = function(event) spawn(event, "/bin/true") end,
    prepare = function(config, level) end,
    action = function(inlet)
        local event = inlet.getEvent()
        spawn(event, "/bin/true")
    end,
    collect = function(agent, exitcode) return "ok" end,
}
sync { layer1, source = "@BASE@/src", target = "@BASE@/dst-layer1" }
